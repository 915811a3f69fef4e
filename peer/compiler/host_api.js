// Flamenco Peer: the host API that Flamenco 3 job-type scripts expect.
//
// Evaluated once in every fresh V8 context, before the job-type script.  It
// installs the globals a Flamenco Manager provides (print, alert, author,
// path, process, require, frameChunker, frameCount, formatTimestampLocal,
// shellSplit) and one hidden, read-only global `__flamencoPeerHost` that the
// Python side (peer/compiler/jsengine.py) uses to configure the context, run
// compileJob and fetch results.  Every result crosses to Python as ONE JSON
// string: walking mini-racer proxies from Python is orders of magnitude slower.
//
// This file runs in strict mode; the job-type script itself runs in sloppy
// mode, like in Flamenco (goja), unless it says "use strict" itself.
// See docs/job-types.md for every decision taken here.

(function installFlamencoHostAPI(global) {
  "use strict";

  // ---- per-context configuration, filled in by Python via configure() ----
  const config = {
    uuidSeed: [],          // 16 random bytes from Python's os.urandom
    cwd: null,             // process.cwd() of the peer, or null if unknown
    platform: "linux",     // Go GOOS spelling of the peer's platform
    tzOffsetMinutes: 0,    // local UTC offset at job.created, from Python
  };

  // Globals are writable and configurable so a script may shadow them with
  // its own `var path = ...` or `let print = ...` without a SyntaxError.
  function defineGlobal(name, value) {
    Object.defineProperty(global, name, {
      value: value, writable: true, configurable: true, enumerable: false,
    });
  }

  function asGoString(value) {
    // Go's string parameters receive "" for undefined/null.
    return value === undefined || value === null ? "" : String(value);
  }

  function asGoInt(value) {
    const n = Math.trunc(Number(value));
    return Number.isFinite(n) ? n : 0;
  }

  // JSON with `undefined` turned into null, like Go's export of a JS value
  // into interface{}.  Throws on cycles (a clear TypeError).
  function toGoJSON(value) {
    return JSON.stringify(value === undefined ? null : value, (key, v) => (v === undefined ? null : v));
  }

  // toGoJSON calls its replacer for every value, which made it most of the
  // cost of a 10,000-task job.  So plain data (literals, arrays, strings,
  // finite numbers, booleans, null, undefined) is first copied by hand, with
  // the same result, and only a copy free of `undefined` meets JSON.stringify.
  // Anything else (functions, Dates, class instances, toJSON, very deep or
  // circular data) makes plainCopy give up, and toGoJSON handles the value
  // as before, errors included.
  const NOT_PLAIN = Object.freeze({ notPlain: true }); // thrown, never escapes
  const MAX_PLAIN_DEPTH = 64;
  // Room for the dependencies of a task waiting for every frame of the
  // longest range (2 entries each); a longer, maybe sparse, array is left to
  // JSON's own limits.
  const MAX_PLAIN_LENGTH = 1 << 22;
  const objectPrototype = Object.prototype;
  const isRawJSON = typeof JSON.isRawJSON === "function" ? JSON.isRawJSON : () => false;

  function plainCopy(value, depth) {
    switch (typeof value) {
      case "string":
      case "boolean":
        return value;
      case "number":
        // What JSON makes of it: NaN and infinities become null, -0 becomes 0.
        return Number.isFinite(value) ? (value === 0 ? 0 : value) : null;
      case "undefined":
        return null;
      case "object":
        break;
      default: // function, symbol, bigint
        throw NOT_PLAIN;
    }
    if (value === null) return null;
    if (depth >= MAX_PLAIN_DEPTH || typeof value.toJSON === "function") throw NOT_PLAIN;
    if (Array.isArray(value)) {
      const length = value.length;
      if (length > MAX_PLAIN_LENGTH) throw NOT_PLAIN;
      const copy = new Array(length);
      for (let i = 0; i < length; i++) {
        const item = value[i];
        copy[i] = typeof item === "string" ? item : plainCopy(item, depth + 1); // strings: the usual case
      }
      return copy;
    }
    const proto = Object.getPrototypeOf(value);
    if ((proto !== objectPrototype && proto !== null) || isRawJSON(value)) throw NOT_PLAIN;
    const keys = Object.keys(value);
    const copy = {};
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i];
      // Assigning "__proto__" would set the copy's prototype, and a script may
      // have put setters or read-only properties on Object.prototype.
      if (key in objectPrototype) throw NOT_PLAIN;
      const item = value[key];
      copy[key] = typeof item === "string" ? item : plainCopy(item, depth + 1);
    }
    return copy;
  }

  // A deep copy, detached from the script's objects: JSON.parse(toGoJSON(value)).
  function cloneData(value) {
    try {
      return plainCopy(value, 0);
    } catch (err) {
      if (err !== NOT_PLAIN) throw err;
    }
    return JSON.parse(toGoJSON(value));
  }

  // toGoJSON(value), faster for plain data.
  function snapshotJSON(value) {
    let copy;
    try {
      copy = plainCopy(value, 0);
    } catch (err) {
      if (err !== NOT_PLAIN) throw err;
      return toGoJSON(value);
    }
    return JSON.stringify(copy);
  }

  // ---- print / alert: collected for the submitter, logged by Python ----
  const MAX_MESSAGES = 1000;
  const MAX_MESSAGE_CHARS = 4000;
  const messages = [];
  let droppedMessages = 0;

  function renderArg(value) {
    if (typeof value === "string") return value;
    if (value === undefined) return "undefined";
    if (typeof value === "function") return "[function " + (value.name || "anonymous") + "]";
    try {
      const text = JSON.stringify(value);
      return text === undefined ? String(value) : text;
    } catch (err) {
      return String(value);
    }
  }

  function logMessage(level, args) {
    if (messages.length >= MAX_MESSAGES) {
      droppedMessages++;
      return;
    }
    let text = Array.prototype.map.call(args, renderArg).join(" ");
    if (text.length > MAX_MESSAGE_CHARS) {
      text = text.slice(0, MAX_MESSAGE_CHARS) + " [...]";
    }
    messages.push({ level: level, text: text });
  }

  defineGlobal("print", function print() { logMessage("info", arguments); });
  defineGlobal("alert", function alert() { logMessage("warning", arguments); });

  // ---- UUIDs ----
  // mini-racer has no crypto.randomUUID.  Each UUID is Python's per-context
  // random seed XOR Math.random bytes: independent across compilations even if
  // V8's Math.random were predictable, and checked unique within the context.
  const issuedUUIDs = new Set();
  const HEX_CODES = Array.from("0123456789abcdef", (c) => c.charCodeAt(0));
  const DASH = 45; // "-"
  let seedWords = [0, 0, 0, 0]; // config.uuidSeed as four big-endian 32-bit words

  function setUUIDSeed(bytes) {
    seedWords = [0, 1, 2, 3].map((w) =>
      (((bytes[4 * w] || 0) << 24) | ((bytes[4 * w + 1] || 0) << 16) |
        ((bytes[4 * w + 2] || 0) << 8) | (bytes[4 * w + 3] || 0)) >>> 0);
  }

  // Four bytes of the seed XOR four random bytes: 32 of Math.random's 52 bits.
  function randomWord(w) {
    return ((Math.random() * 4294967296) ^ seedWords[w]) >>> 0;
  }

  function hexDigit(word, shift) {
    return HEX_CODES[(word >>> shift) & 15];
  }

  // One String.fromCharCode call makes the 36 characters at once, which is
  // twice as fast as joining them: scripts make a UUID for every task.
  function newUUID() {
    for (;;) {
      const a = randomWord(0);
      const b = ((randomWord(1) & 0xffff0fff) | 0x4000) >>> 0; // version 4
      const c = ((randomWord(2) & 0x3fffffff) | 0x80000000) >>> 0; // RFC 4122 variant
      const d = randomWord(3);
      const uuid = String.fromCharCode(
        hexDigit(a, 28), hexDigit(a, 24), hexDigit(a, 20), hexDigit(a, 16),
        hexDigit(a, 12), hexDigit(a, 8), hexDigit(a, 4), hexDigit(a, 0), DASH,
        hexDigit(b, 28), hexDigit(b, 24), hexDigit(b, 20), hexDigit(b, 16), DASH,
        hexDigit(b, 12), hexDigit(b, 8), hexDigit(b, 4), hexDigit(b, 0), DASH,
        hexDigit(c, 28), hexDigit(c, 24), hexDigit(c, 20), hexDigit(c, 16), DASH,
        hexDigit(c, 12), hexDigit(c, 8), hexDigit(c, 4), hexDigit(c, 0),
        hexDigit(d, 28), hexDigit(d, 24), hexDigit(d, 20), hexDigit(d, 16),
        hexDigit(d, 12), hexDigit(d, 8), hexDigit(d, 4), hexDigit(d, 0));
      if (!issuedUUIDs.has(uuid)) {
        issuedUUIDs.add(uuid);
        return uuid;
      }
    }
  }

  // ---- author module: tasks and commands ----
  // Member names follow goja's "uncapitalise the Go field" mapping that
  // Flamenco scripts are written against: uUID, addCommand, totalStepCount...
  function AuthoredCommand(name, parameters, totalStepCount) {
    this.name = name;
    this.parameters = parameters;
    this.totalStepCount = totalStepCount;
  }

  function checkCommand(cmd, where) {
    if (cmd === null || typeof cmd !== "object") {
      throw new Error(where + ": expected a command made by author.Command(name, parameters), got " +
        renderArg(cmd));
    }
  }

  // A copy of the command's fields.  The parameters object is shared, as
  // Flamenco shares the Go map: changes to it before job.addTask() count.
  function copyCommand(cmd, where) {
    checkCommand(cmd, where);
    return new AuthoredCommand(asGoString(cmd.name), cmd.parameters === undefined ? {} : cmd.parameters,
      asGoInt(cmd.totalStepCount));
  }

  function AuthoredTask(name, type) {
    this.uUID = newUUID();
    this.name = name;
    this.type = type;
    this.priority = 50; // Flamenco has no parameter for it; always 50.
    this.commands = [];
    this.dependencies = [];
  }

  AuthoredTask.prototype.addCommand = function addCommand(cmd) {
    this.commands.push(copyCommand(cmd, "task.addCommand(cmd)"));
  };

  AuthoredTask.prototype.addDependency = function addDependency(task) {
    if (!(task instanceof AuthoredTask)) {
      throw new Error("task.addDependency(task): expected a task made by author.Task(name, type), got " +
        renderArg(task));
    }
    // Like Flamenco: no cycle check here, and the other task need not be in the
    // job yet.  Both are checked by Python on the finished job.
    this.dependencies.push(task);
  };

  const author = Object.freeze({
    Task: function Task(name, type) {
      const taskName = asGoString(name).trim();
      const taskType = asGoString(type).trim();
      if (taskName === "") throw new Error("author.Task(name, type): name is required");
      if (taskType === "") throw new Error("author.Task(name, type): type is required");
      return new AuthoredTask(taskName, taskType);
    },
    Command: function Command(name, parameters, totalStepCount) {
      if (parameters === undefined || parameters === null) {
        parameters = {};
      } else if (typeof parameters !== "object" || Array.isArray(parameters)) {
        throw new Error("author.Command(name, parameters): parameters must be an object, got " +
          renderArg(parameters));
      }
      // Flamenco converts the parameters to a Go map at this call, so later
      // changes to the JS object are not seen; we copy for the same effect.
      return new AuthoredCommand(asGoString(name), cloneData(parameters), asGoInt(totalStepCount));
    },
  });

  // ---- frame ranges ----
  function parseFrameNumber(text, part) {
    const trimmed = text.trim();
    if (!/^[+-]?[0-9]+$/.test(trimmed)) {
      throw new Error('invalid range "' + part + '": expected a frame number, got "' + trimmed + '"');
    }
    const frame = Number(trimmed);
    if (!Number.isSafeInteger(frame)) {
      throw new Error('invalid range "' + part + '": frame number ' + trimmed + " is too large");
    }
    return frame;
  }

  // Far more than Blender can render (its last frame is 1048574); the cap
  // turns a typo like "1-10000000000" into an error instead of a long hang.
  const MAX_FRAMES = 1048576;

  // "1..3,7" -> [1, 2, 3, 7]: sorted, without duplicates.
  function explodeFrameRange(range) {
    const frames = new Set();
    for (const part of range.replaceAll("..", "-").split(",")) {
      const pieces = part.split("-");
      if (pieces.length > 2) {
        throw new Error('invalid range "' + part + '": use A-B or A..B for a range of frames');
      }
      const first = parseFrameNumber(pieces[0], part);
      const last = pieces.length === 2 ? parseFrameNumber(pieces[1], part) : first;
      for (let frame = first; frame <= last; frame++) { // reversed: nothing
        frames.add(frame);
        if (frames.size > MAX_FRAMES) {
          throw new Error('invalid range "' + range + '": more than ' + MAX_FRAMES + " frames");
        }
      }
    }
    return Array.from(frames).sort((a, b) => a - b);
  }

  // [1,2,3,5,6,9] -> "1-3,5,6,9": runs of 3+ become A-B, shorter runs are listed.
  function compactFrames(frames) {
    const parts = [];
    let start = 0;
    while (start < frames.length) {
      let end = start;
      while (end + 1 < frames.length && frames[end + 1] === frames[end] + 1) end++;
      const runLength = end - start + 1;
      if (runLength >= 3) {
        parts.push(frames[start] + "-" + frames[end]);
      } else {
        for (let i = start; i <= end; i++) parts.push(String(frames[i]));
      }
      start = end + 1;
    }
    return parts.join(",");
  }

  defineGlobal("frameChunker", function frameChunker(range, chunkSize) {
    const text = asGoString(range).trim();
    if (text === "") throw new Error('invalid range "": empty range');
    const size = asGoInt(chunkSize);
    if (size < 1) throw new Error("invalid chunk size, must be positive number: " + size);
    const frames = explodeFrameRange(text);
    if (frames.length === 0) throw new Error('invalid range "' + text + '": empty range');
    if (size === 1) return frames.map(String);
    const chunks = [];
    for (let i = 0; i < frames.length; i += size) {
      chunks.push(compactFrames(frames.slice(i, i + size)));
    }
    return chunks;
  });

  // Job types call frameCount once per chunk, so the shapes frameChunker
  // makes ("12", "1-10") are counted without building the list of frames.
  // Up to 15 digits is always a safe integer.
  const ONE_FRAME = /^[0-9]{1,15}$/;
  const ONE_RUN = /^([0-9]{1,15})-([0-9]{1,15})$/;

  defineGlobal("frameCount", function frameCount(range) {
    const text = asGoString(range);
    if (ONE_FRAME.test(text)) return 1;
    const run = ONE_RUN.exec(text);
    if (run !== null) {
      const count = Math.max(0, Number(run[2]) - Number(run[1]) + 1);
      if (count <= MAX_FRAMES) return count;
    }
    return explodeFrameRange(text).length;
  });

  // ---- timestamps ----
  // `job.created` is a Date.  V8 inside mini-racer does not know the peer's
  // time zone, so Python passes the local UTC offset at job.created.
  defineGlobal("formatTimestampLocal", function formatTimestampLocal(timestamp) {
    const date = timestamp instanceof Date ? timestamp : new Date(timestamp);
    if (Number.isNaN(date.getTime())) {
      throw new Error("formatTimestampLocal(timestamp): not a valid timestamp: " + renderArg(timestamp) +
        " (pass job.created)");
    }
    const local = new Date(date.getTime() + config.tzOffsetMinutes * 60000);
    const pad = (n, width) => String(n).padStart(width, "0");
    return pad(local.getUTCFullYear(), 4) + "-" + pad(local.getUTCMonth() + 1, 2) + "-" +
      pad(local.getUTCDate(), 2) + "_" + pad(local.getUTCHours(), 2) +
      pad(local.getUTCMinutes(), 2) + pad(local.getUTCSeconds(), 2);
  });

  // ---- shellSplit: POSIX-like word splitting (same rules as google/shlex) ----
  defineGlobal("shellSplit", function shellSplit(input) {
    const text = asGoString(input);
    const isSpace = (c) => c === " " || c === "\t" || c === "\r" || c === "\n";
    const words = [];
    let word = null; // null: between words
    let i = 0;
    const fail = (why) => {
      throw new Error("shellSplit(" + JSON.stringify(text) + "): " + why);
    };
    while (i < text.length) {
      const c = text[i];
      if (word === null) {
        if (isSpace(c)) { i++; continue; }
        if (c === "#") { // comment up to the end of the line
          while (i < text.length && text[i] !== "\n") i++;
          continue;
        }
        word = "";
      }
      if (isSpace(c)) {
        words.push(word);
        word = null;
        i++;
      } else if (c === "\\") {
        if (i + 1 >= text.length) fail("EOF found after escape character");
        word += text[i + 1];
        i += 2;
      } else if (c === "'") {
        const close = text.indexOf("'", i + 1);
        if (close < 0) fail("EOF found when expecting closing quote");
        word += text.slice(i + 1, close);
        i = close + 1;
      } else if (c === '"') {
        i++;
        for (;;) {
          if (i >= text.length) fail("EOF found when expecting closing quote");
          const q = text[i];
          if (q === '"') { i++; break; }
          if (q === "\\") {
            if (i + 1 >= text.length) fail("EOF found after escape character");
            word += text[i + 1];
            i += 2;
          } else {
            word += q;
            i++;
          }
        }
      } else {
        word += c;
        i++;
      }
    }
    if (word !== null) words.push(word);
    return words;
  });

  // ---- path module: cross-platform, always answers with forward slashes ----
  const toSlash = (p) => p.replaceAll("\\", "/");

  // Go's path.Clean: lexical, "/"-only.
  function cleanPath(p) {
    if (p === "") return ".";
    const rooted = p[0] === "/";
    const out = [];
    for (const elem of p.split("/")) {
      if (elem === "" || elem === ".") continue;
      if (elem === "..") {
        if (out.length > 0 && out[out.length - 1] !== "..") out.pop();
        else if (!rooted) out.push("..");
      } else {
        out.push(elem);
      }
    }
    const cleaned = (rooted ? "/" : "") + out.join("/");
    return cleaned === "" ? "." : cleaned;
  }

  function basename(p) {
    let s = toSlash(asGoString(p));
    if (s === "") return ".";
    while (s.length > 0 && s[s.length - 1] === "/") s = s.slice(0, -1);
    if (s === "") return "/";
    return s.slice(s.lastIndexOf("/") + 1);
  }

  // Not Go's path.Dir: no cleaning, so a UNC "//server" prefix survives.
  function dirname(p) {
    const s = toSlash(asGoString(p));
    const slash = s.lastIndexOf("/");
    if (slash < 0) return ".";
    if (slash === 0) return "/";
    return s.slice(0, slash);
  }

  // Joined and cleaned with "/" only, then backslashes converted, so runs of
  // backslashes (UNC "\\server") are not collapsed.
  function join() {
    const parts = Array.prototype.map.call(arguments, asGoString).filter((s) => s !== "");
    if (parts.length === 0) return "";
    return toSlash(cleanPath(parts.join("/")));
  }

  function stem(p) {
    const base = basename(p);
    for (let i = base.length - 1; i >= 0 && base[i] !== "/"; i--) {
      if (base[i] === ".") return base.slice(0, i);
    }
    return base;
  }

  const pathModule = Object.freeze({ basename: basename, dirname: dirname, join: join, stem: stem });

  const processModule = Object.freeze({
    get platform() { return config.platform; },
    cwd: function cwd() {
      if (config.cwd === null) throw new Error("process.cwd(): the working directory is not available");
      return config.cwd;
    },
  });

  const modules = { author: author, path: pathModule, process: processModule };

  defineGlobal("author", author);
  defineGlobal("path", pathModule);
  defineGlobal("process", processModule);
  defineGlobal("require", function require(name) {
    const key = asGoString(name);
    if (Object.prototype.hasOwnProperty.call(modules, key)) return modules[key];
    throw new Error('require("' + key + '"): no such module; job-type scripts can require ' +
      '"author", "path" and "process" only');
  });

  // Flamenco has neither console nor timers; a script using them would break
  // on a real Manager.  mini-racer installs both.  Its timers are top-level
  // `var`s, which cannot be deleted, so they are set to undefined instead.
  delete global.console;
  global.setTimeout = undefined;
  global.clearTimeout = undefined;
  global.__timer_manager = undefined;

  // ---- the job object and the bridge to Python ----

  // What job.addTask() keeps of a task: a deep snapshot, so commands,
  // dependencies or parameters changed after the call are not part of the
  // job.  It is also what crosses to Python, once per task, so it is an array
  // rather than an object (see _ResultReader in runtime.py):
  //   [uUID, name, type, priority,
  //    [[command name, parameters, totalStepCount], ...],
  //    [dependency uUID, dependency name, ...],
  //    (only if some are not tasks:) [positions of those dependencies]]
  // A dependency's identity is its UUID; its name only serves error messages.
  function taskSnapshot(task) {
    const snapshot = [task.uUID, task.name, task.type, task.priority];
    snapshot.push(task.commands.map((cmd) => {
      checkCommand(cmd, "task.commands"); // the fields of copyCommand(), without the object
      return [asGoString(cmd.name), cmd.parameters === undefined ? {} : cmd.parameters, asGoInt(cmd.totalStepCount)];
    }));
    const dependencies = task.dependencies;
    const uuidsAndNames = [];
    const notTasks = [];
    for (let i = 0; i < dependencies.length; i++) {
      const dep = dependencies[i];
      if (dep instanceof AuthoredTask) uuidsAndNames.push(dep.uUID, dep.name);
      else notTasks.push(i);
    }
    snapshot.push(uuidsAndNames);
    if (notTasks.length > 0) snapshot.push(notTasks);
    return snapshot;
  }

  // The object form of a snapshot, for scripts that read job.tasks.
  function taskFromSnapshot(snapshot) {
    const uuidsAndNames = snapshot[5];
    const notTasks = snapshot[6] || [];
    const dependencies = [];
    let next = 0;
    while (next < uuidsAndNames.length || notTasks.includes(dependencies.length)) {
      if (notTasks.includes(dependencies.length)) {
        dependencies.push(null);
      } else {
        dependencies.push({ uUID: uuidsAndNames[next], name: uuidsAndNames[next + 1] });
        next += 2;
      }
    }
    return {
      uUID: snapshot[0],
      name: snapshot[1],
      type: snapshot[2],
      priority: snapshot[3],
      commands: snapshot[4].map((cmd) =>
        (cmd === null ? null : { name: cmd[0], parameters: cmd[1], totalStepCount: cmd[2] })),
      dependencies: dependencies,
    };
  }

  function makeJob(input) {
    const taskJSON = []; // one JSON text per added task, see taskSnapshot()
    const job = {
      jobID: input.jobID,
      name: input.name,
      jobType: input.jobType,
      priority: input.priority,
      status: "under-construction",
      created: new Date(input.createdMillis),
      settings: input.settings,
      metadata: input.metadata,
      storage: { shamanCheckoutID: input.shamanCheckoutID },
      workerTagUUID: input.workerTagUUID,
    };
    Object.defineProperty(job, "tasks", {
      // A copy: tasks enter the job through job.addTask() only.
      get: function () { return taskJSON.map((text) => taskFromSnapshot(JSON.parse(text))); },
      enumerable: true,
    });
    Object.defineProperty(job, "addTask", {
      value: function addTask(task) {
        if (!(task instanceof AuthoredTask)) {
          throw new Error("job.addTask(task): expected a task made by author.Task(name, type), got " +
            renderArg(task));
        }
        // Kept as JSON text: one string instead of a tree of objects per task.
        taskJSON.push(snapshotJSON(taskSnapshot(task)));
      },
      enumerable: false,
    });
    return { job: job, taskJSON: taskJSON };
  }

  function resultJSON(value) {
    try {
      return JSON.stringify(value);
    } catch (err) {
      return JSON.stringify({ invalidResult: String(err) });
    }
  }

  const host = Object.freeze({
    configure: function configure(options) {
      Object.assign(config, options);
      setUUIDSeed(config.uuidSeed);
      return "{}";
    },
    // JSON of a top-level binding of the script, e.g. JOB_TYPE.
    exportValue: function exportValue(value) {
      return resultJSON({ defined: value !== undefined, value: value === undefined ? null : value });
    },
    messages: function getMessages() {
      return JSON.stringify({ messages: messages, dropped: droppedMessages });
    },
    compile: function compile(compileJob, input) {
      if (typeof compileJob !== "function") return JSON.stringify({ noCompileFunction: true });
      const built = makeJob(input);
      compileJob.call(undefined, built.job);
      const job = built.job;
      const jobJSON = resultJSON({
        name: job.name,
        priority: job.priority,
        settings: job.settings,
        metadata: job.metadata,
      });
      // The tasks are JSON already; splicing the texts avoids copying them again.
      return '{"job":' + jobJSON + ',"tasks":[' + built.taskJSON.join(",") + "]}";
    },
  });

  Object.defineProperty(global, "__flamencoPeerHost", {
    value: host, writable: false, configurable: false, enumerable: false,
  });
})(globalThis);
