// SPDX-License-Identifier: GPL-3.0-or-later
//
// Encode Media: encode a media file with FFmpeg, optionally remux it with
// mkvmerge to set track languages, names and flags, then move the result to
// its final place and delete the intermediate files.
//
// In the spirit of Sisyphus' encoding jobs (ffmpeg -> mkvmerge -> cleanup):
// FFmpeg options come in named *option sets*, chosen per output stream by a
// compact stream-map string, and every step checks its data before it runs:
// this script checks the settings, and each worker command checks its
// parameters (see docs/job-types.md, "encode-media").
//
// Tasks produced, each waiting for the one before:
//   encode   (type "ffmpeg")           ffmpeg-encode into an intermediate file;
//   remux    (type "ffmpeg")           mkvmerge, only when `remux` is on;
//   cleanup  (type "file-management")  move-file to output_file, then
//                                      delete-files for the intermediates.
// The remux task uses the "ffmpeg" task type so that workers with the default
// task types run it; such a worker needs MKVToolNix installed as well.

// Named FFmpeg option sets.  `kind` says which streams a set suits ("any":
// all of them).  Option names are FFmpeg's, without "-" and without a stream
// specifier: the worker writes {crf: 19} for output audio stream 1 as
// `-crf:a:1 19`.  An object value becomes "k=v:k=v" (for -x265-params).
const OPTION_SETS = {
  "x264-crf23": {
    kind: "video",
    description: "H.264, good quality, plays everywhere",
    options: { codec: "libx264", crf: 23, preset: "medium", pix_fmt: "yuv420p" },
  },
  "x264-preview": {
    kind: "video",
    description: "H.264, fast and small, for previews",
    options: { codec: "libx264", crf: 28, preset: "veryfast", pix_fmt: "yuv420p" },
  },
  "x265-crf26": {
    kind: "video",
    description: "H.265/HEVC, good quality, small files",
    options: { codec: "libx265", crf: 26, preset: "medium", pix_fmt: "yuv420p" },
  },
  // The example option set of the Sisyphus documentation: 10-bit HEVC tuned
  // for dark, grainy material.
  "x265-dark-and-stormy": {
    kind: "video",
    description: "H.265/HEVC 10-bit, slow, tuned for dark and grainy material",
    options: {
      codec: "libx265",
      crf: 19,
      pix_fmt: "yuv420p10le",
      preset: "slow",
      "x265-params": { "limit-sao": 1, bframes: 8, "psy-rd": 1, "psy-rdoq": 2, "aq-mode": 3 },
    },
  },
  "vp9-crf32": {
    kind: "video",
    description: "VP9 constant quality, for .webm",
    options: { codec: "libvpx-vp9", crf: 32, b: 0, deadline: "good", "cpu-used": 4, "row-mt": 1 },
  },
  "aac-160k": {
    kind: "audio",
    description: "AAC 160 kbit/s, channels as in the source",
    options: { codec: "aac", b: "160k" },
  },
  "aac-128k-stereo": {
    kind: "audio",
    description: "AAC 128 kbit/s, downmixed to stereo",
    options: { codec: "aac", b: "128k", ac: 2 },
  },
  "opus-128k-stereo": {
    kind: "audio",
    description: "Opus 128 kbit/s stereo",
    options: { codec: "libopus", b: "128k", ac: 2, vbr: "on", compression_level: 10, application: "audio" },
  },
  "opus-96k-stereo": {
    kind: "audio",
    description: "Opus 96 kbit/s stereo",
    options: { codec: "libopus", b: "96k", ac: 2, vbr: "on", compression_level: 10, application: "audio" },
  },
  "srt": {
    kind: "subtitle",
    description: "Text subtitles as SubRip (Matroska)",
    options: { codec: "srt" },
  },
  "ass": {
    kind: "subtitle",
    description: "Text subtitles as ASS/SSA (Matroska)",
    options: { codec: "ass" },
  },
  "mov-text": {
    kind: "subtitle",
    description: "Text subtitles for MP4/MOV",
    options: { codec: "mov_text" },
  },
  "copy": {
    kind: "any",
    description: "Copy the stream unchanged",
    options: { codec: "copy" },
  },
};

const STREAM_KINDS = { v: "video", a: "audio", s: "subtitle" };

function optionSetNames(kind) {
  return Object.keys(OPTION_SETS).filter((name) => [kind, "any"].includes(OPTION_SETS[name].kind));
}

const JOB_TYPE = {
  label: "Encode Media",
  description: "Encode a media file with FFmpeg option sets, optionally remux with mkvmerge, then move it into place",
  settings: [
    {
      key: "source_file",
      type: "string",
      subtype: "file_path",
      required: true,
      description: "Media file to encode; it is source 0 in stream_maps",
    },
    {
      key: "extra_sources",
      type: "string",
      description: "More input files separated by '|', e.g. an external subtitle file; they are sources 1, 2, ... in stream_maps",
    },
    {
      key: "stream_maps",
      type: "string",
      required: true,
      default: "0:v:0, 0:a:0",
      description:
        "The output's streams, in order, separated by commas: 'source:type:index' or 'source:type:index=option-set', " +
        "type v (video), a (audio) or s (subtitles). " +
        "Example: '0:v:0=x265-dark-and-stormy, 0:a:1=opus-128k-stereo, 0:s:0=copy'",
    },
    {
      key: "video_options",
      type: "string",
      choices: optionSetNames("video"),
      default: "x264-crf23",
      description: "Option set for video streams mapped without '=option-set'",
    },
    {
      key: "audio_options",
      type: "string",
      choices: optionSetNames("audio"),
      default: "aac-160k",
      description: "Option set for audio streams mapped without '=option-set'",
    },
    {
      key: "subtitle_options",
      type: "string",
      choices: optionSetNames("subtitle"),
      default: "copy",
      description: "Option set for subtitle streams mapped without '=option-set'",
    },
    {
      key: "output_file",
      type: "string",
      subtype: "file_path",
      required: true,
      description: "Where the finished file goes; its extension picks the container (.mkv, .mp4, .webm, ...)",
    },
    {
      key: "overwrite",
      type: "bool",
      default: false,
      description: "Replace output_file if it already exists",
    },
    {
      key: "work_dir",
      type: "string",
      subtype: "dir_path",
      visible: "submission",
      description: "Directory for intermediate files (default: the directory of output_file)",
    },
    {
      key: "remux",
      type: "bool",
      default: false,
      description: "Remux with mkvmerge to set the title and track languages, names and flags (output_file must be Matroska or WebM)",
    },
    {
      key: "title",
      type: "string",
      description: "Title stored in the file (with remux)",
    },
    {
      key: "track_options",
      type: "string",
      description:
        "Track properties for the remux, separated by ';': 'N: lang=eng name=\"Main\" default=yes forced=no', " +
        "where N counts the stream_maps entries from 0",
    },
    {
      key: "keep_intermediates",
      type: "bool",
      default: false,
      visible: "submission",
      description: "Keep the intermediate encode after the remux",
    },
  ],
};

// Containers mkvmerge can write.
const MATROSKA_EXTENSIONS = [".mkv", ".mka", ".mks", ".mk3d", ".webm"];
// Containers that only take MP4's own text subtitle format.
const MP4_EXTENSIONS = [".mp4", ".m4v", ".mov"];

// Names of the track_options keys, and what mkvmerge calls them.
const TRACK_KEYS = {
  lang: "language",
  language: "language",
  name: "track-name",
  default: "default-track",
  forced: "forced-track",
  commentary: "commentary-flag",
};
const FLAG_KEYS = ["default-track", "forced-track", "commentary-flag"];
const LANGUAGE_RE = /^[A-Za-z]{2,3}(-[A-Za-z0-9]{1,8})*$/;

function compileJob(job) {
  const settings = job.settings;
  const sources = collectSources(settings);
  const defaults = defaultOptionSets(settings);
  const entries = parseStreamMaps(settings.stream_maps, sources, defaults);

  const output = checkOutputFile(settings, entries);
  const remux = Boolean(settings.remux);
  const tracks = parseTrackOptions(settings.track_options, entries);
  if (!remux && (tracks.length > 0 || settings.title)) {
    print("title and track_options are only applied by the remux step, and remux is off");
  }

  const files = intermediateFiles(job, output, remux);

  const encodeTask = author.Task("encode", "ffmpeg");
  encodeTask.addCommand(author.Command("ffmpeg-encode", {
    exe: "ffmpeg",
    sources: sources,
    sourceMaps: entries.map((e) => ({ source: e.source, specifier: e.type, stream: e.index })),
    outputMaps: entries.map((e) => ({ specifier: e.type, stream: e.outputIndex, options: e.options })),
    outputFile: files.encoded,
    // The intermediate belongs to this job; a retried task replaces its own.
    overwrite: true,
    progressSteps: 100,
  }, 100));
  job.addTask(encodeTask);

  let lastTask = encodeTask;
  let finalFile = files.encoded;
  if (remux) {
    const remuxTask = author.Task("remux", "ffmpeg");
    const options = { "no-global-tags": null, "no-track-tags": null };
    if (settings.title) {
      options.title = `${settings.title}`;
    }
    remuxTask.addCommand(author.Command("mkvmerge", {
      exe: "mkvmerge",
      sources: [files.encoded],
      tracks: tracks.map((t) => ({ source: 0, track: t.track, options: t.options })),
      options: options,
      outputFile: files.remuxed,
      overwrite: true,
      progressSteps: 10,
    }, 10));
    remuxTask.addDependency(lastTask);
    job.addTask(remuxTask);
    lastTask = remuxTask;
    finalFile = files.remuxed;
  }

  const cleanupTask = author.Task("cleanup", "file-management");
  cleanupTask.addCommand(author.Command("move-file", {
    src: finalFile,
    dest: output,
    overwrite: Boolean(settings.overwrite),
  }));
  if (remux && !settings.keep_intermediates) {
    cleanupTask.addCommand(author.Command("delete-files", {
      paths: [files.encoded],
      withinDirectory: files.workDir,
      missingOk: true,
    }));
  }
  cleanupTask.addDependency(lastTask);
  job.addTask(cleanupTask);
}

// A path the worker can use as given: absolute (POSIX, "C:\", UNC), or
// starting with a worker variable such as "{render}".
function looksAbsolute(p) {
  return p.startsWith("/") || p.startsWith("{") || /^[A-Za-z]:[\\/]/.test(p) || p.startsWith("\\\\");
}

function requirePath(name, value, what) {
  const text = value === undefined || value === null ? "" : `${value}`.trim();
  if (!text) {
    throw `setting "${name}" is empty: give ${what}`;
  }
  if (!looksAbsolute(text)) {
    throw `setting "${name}" is "${text}", a relative path: give an absolute path, because the worker's working directory is unknown`;
  }
  return text;
}

function collectSources(settings) {
  const sources = [requirePath("source_file", settings.source_file, "the media file to encode")];
  const extra = settings.extra_sources ? `${settings.extra_sources}` : "";
  if (extra.trim()) {
    extra.split("|").forEach((part, i) => {
      const trimmed = part.trim();
      if (!trimmed) {
        throw `setting "extra_sources": part ${i + 1} of "${extra}" is empty; separate file paths with a single '|'`;
      }
      sources.push(requirePath(`extra_sources (part ${i + 1})`, trimmed, "a file path"));
    });
  }
  return sources;
}

function defaultOptionSets(settings) {
  const defaults = {};
  for (const [type, kind] of Object.entries(STREAM_KINDS)) {
    const key = `${kind}_options`;
    const name = settings[key] ? `${settings[key]}` : "";
    if (name) {
      // Checked here too: a hand-written submission may skip choices validation.
      lookUpOptionSet(name, kind, `setting "${key}"`);
    }
    defaults[type] = name;
  }
  return defaults;
}

function lookUpOptionSet(name, kind, where) {
  const set = Object.prototype.hasOwnProperty.call(OPTION_SETS, name) ? OPTION_SETS[name] : undefined;
  if (!set) {
    throw `${where}: unknown option set "${name}"; the ${kind} option sets are ${optionSetNames(kind).join(", ")}`;
  }
  if (set.kind !== "any" && set.kind !== kind) {
    throw `${where}: option set "${name}" is for ${set.kind} streams, not ${kind}; ` +
      `the ${kind} option sets are ${optionSetNames(kind).join(", ")}`;
  }
  return set;
}

// "0:v:0=x265-dark-and-stormy, 0:a:1, 1:s:0=copy" -> one entry per output
// stream, in output order.
function parseStreamMaps(text, sources, defaults) {
  const raw = text === undefined || text === null ? "" : `${text}`;
  if (!raw.trim()) {
    throw 'setting "stream_maps" is empty: list the output streams, e.g. "0:v:0, 0:a:0"';
  }
  const outputsPerType = { v: 0, a: 0, s: 0 };
  return raw.split(",").map((part, i) => {
    const entry = part.trim();
    const where = `stream_maps entry ${i + 1} "${entry}"`;
    if (!entry) {
      throw `stream_maps entry ${i + 1} is empty; separate the entries with single commas, e.g. "0:v:0, 0:a:0"`;
    }
    const eq = entry.indexOf("=");
    const stream = (eq < 0 ? entry : entry.slice(0, eq)).trim();
    const setName = eq < 0 ? "" : entry.slice(eq + 1).trim();
    const parts = stream.split(":").map((s) => s.trim());
    if (parts.length !== 3) {
      throw `${where}: write it as source:type:index, optionally followed by =option-set, e.g. "0:a:1=opus-128k-stereo"`;
    }
    const [sourceText, type, indexText] = parts;
    if (!/^\d+$/.test(sourceText)) {
      throw `${where}: the source "${sourceText}" must be a number: 0 for source_file, 1 and up for extra_sources`;
    }
    const source = Number(sourceText);
    if (source >= sources.length) {
      const extra = sources.length > 1 ? `0 (source_file) to ${sources.length - 1} (extra_sources)` : "only 0 (source_file), since extra_sources is empty";
      throw `${where}: there is no source ${source}; the sources are ${extra}`;
    }
    if (!Object.prototype.hasOwnProperty.call(STREAM_KINDS, type)) {
      throw `${where}: the stream type "${type}" must be v (video), a (audio) or s (subtitles)`;
    }
    if (!/^\d+$/.test(indexText)) {
      throw `${where}: the stream index "${indexText}" must be a number counting the source's ${STREAM_KINDS[type]} streams from 0`;
    }
    if (eq >= 0 && !setName) {
      throw `${where}: nothing after "="; name an option set or leave out the "="`;
    }
    const kind = STREAM_KINDS[type];
    const name = setName || defaults[type];
    if (!name) {
      throw `${where}: no option set given, and setting "${kind}_options" is empty; add "=option-set" or choose a ${kind}_options`;
    }
    const set = lookUpOptionSet(name, kind, where);
    const outputIndex = outputsPerType[type]++;
    return {
      source: source,
      type: type,
      index: Number(indexText),
      outputIndex: outputIndex,
      setName: name,
      options: JSON.parse(JSON.stringify(set.options)),
    };
  });
}

function extensionOf(file) {
  const base = path.basename(file);
  const dot = base.lastIndexOf(".");
  return dot > 0 ? base.slice(dot).toLowerCase() : "";
}

function checkOutputFile(settings, entries) {
  const output = requirePath("output_file", settings.output_file, "the path of the finished file");
  const ext = extensionOf(output);
  if (!ext) {
    throw `setting "output_file" is "${output}", which has no extension; add one (e.g. ".mkv"), it picks the container`;
  }
  if (settings.remux && !MATROSKA_EXTENSIONS.includes(ext)) {
    throw `setting "output_file" ends in "${ext}", but mkvmerge (remux) writes only ${MATROSKA_EXTENSIONS.join(", ")}; ` +
      "change the extension or turn remux off";
  }
  if (MP4_EXTENSIONS.includes(ext)) {
    for (const entry of entries) {
      if (entry.type === "s" && entry.setName !== "mov-text" && entry.setName !== "copy") {
        throw `output "${ext}" files only hold MP4 text subtitles: use "=mov-text" instead of "=${entry.setName}" for ${entry.source}:s:${entry.index}`;
      }
    }
  }
  return output;
}

// "0: lang=eng name='Main video' default=yes; 1: lang=jpn" -> per-track
// mkvmerge options.  Track N is the N-th stream_maps entry (from 0), which is
// the N-th track of the encoded file.
function parseTrackOptions(text, entries) {
  const raw = text === undefined || text === null ? "" : `${text}`;
  if (!raw.trim()) {
    return [];
  }
  const seen = {};
  const tracks = [];
  splitOutsideQuotes(raw, ";").forEach((part, i) => {
    const entry = part.trim();
    if (!entry) {
      return; // a trailing ";" is harmless
    }
    const where = `track_options entry ${i + 1} "${entry}"`;
    const match = /^(\d+)\s*:(.*)$/s.exec(entry);
    if (!match) {
      throw `${where}: start with the track number and a colon, e.g. "1: lang=jpn name='Stereo'"`;
    }
    const track = Number(match[1]);
    if (track >= entries.length) {
      throw `${where}: there is no track ${track}; stream_maps makes ${entries.length} tracks, numbered 0 to ${entries.length - 1}`;
    }
    if (seen[track]) {
      throw `${where}: track ${track} already has options in entry ${seen[track]}; put them in one entry`;
    }
    seen[track] = i + 1;
    let words;
    try {
      words = shellSplit(match[2]);
    } catch (err) {
      throw `${where}: ${err}; quote names with spaces like name='Main video'`;
    }
    if (words.length === 0) {
      throw `${where}: no options after "${track}:"; e.g. lang=eng name='Main' default=yes`;
    }
    const options = {};
    for (const word of words) {
      const eq = word.indexOf("=");
      const key = eq < 0 ? word : word.slice(0, eq);
      const value = eq < 0 ? "" : word.slice(eq + 1);
      const option = TRACK_KEYS[key];
      if (!option || !Object.prototype.hasOwnProperty.call(TRACK_KEYS, key)) {
        throw `${where}: unknown option "${key}"; use ${Object.keys(TRACK_KEYS).join(", ")}`;
      }
      if (eq < 0) {
        throw `${where}: "${key}" needs a value, e.g. ${key}=${FLAG_KEYS.includes(option) ? "yes" : "..."}`;
      }
      if (Object.prototype.hasOwnProperty.call(options, option)) {
        throw `${where}: "${key}" is given twice`;
      }
      if (option === "language" && !LANGUAGE_RE.test(value)) {
        throw `${where}: language "${value}" must be an ISO 639-2 code or BCP 47 tag, e.g. eng, jpn, en-GB`;
      }
      if (FLAG_KEYS.includes(option) && !["yes", "no"].includes(value)) {
        throw `${where}: ${key}=${value} must be yes or no`;
      }
      options[option] = value;
    }
    tracks.push({ track: track, options: options });
  });
  return tracks;
}

// Split at `separator`, except inside '...' or "..." (track names may
// contain it).  Unbalanced quotes are left to shellSplit to report.
function splitOutsideQuotes(text, separator) {
  const parts = [];
  let current = "";
  let quote = "";
  for (let i = 0; i < text.length; i++) {
    const ch = text[i];
    if (quote) {
      if (ch === "\\" && quote === '"' && i + 1 < text.length) {
        current += ch + text[++i];
        continue;
      }
      if (ch === quote) {
        quote = "";
      }
    } else if (ch === "'" || ch === '"') {
      quote = ch;
    } else if (ch === separator) {
      parts.push(current);
      current = "";
      continue;
    }
    current += ch;
  }
  parts.push(current);
  return parts;
}

// Intermediate files carry the job ID, so jobs sharing a work_dir never
// touch each other's files.
function intermediateFiles(job, output, remux) {
  const workDir = job.settings.work_dir ? `${job.settings.work_dir}`.trim() : "";
  const dir = workDir ? requirePath("work_dir", workDir, "a directory") : path.dirname(output);
  const tag = `${job.jobID || "job"}`.slice(0, 8);
  const stem = path.stem(output);
  const ext = extensionOf(output);
  return {
    workDir: dir,
    encoded: path.join(dir, `${stem}-${tag}.encoded${remux ? ".mkv" : ext}`),
    remuxed: path.join(dir, `${stem}-${tag}.remuxed${ext}`),
  };
}
