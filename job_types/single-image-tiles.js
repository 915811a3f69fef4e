// SPDX-License-Identifier: GPL-3.0-or-later
//
// Single Image in Tiles: split one frame into tiles_x × tiles_y tiles that
// render on different workers, then merge them into one PNG.
//
// Uses only Flamenco 3's standard `blender-render` command, so it also runs on
// an unmodified Flamenco Manager and Worker.
//
// Tasks produced, in this order:
//   tile-<n>-of-<N> (x A-B, y C-D)  (type "blender")  one per tile, independent;
//                                    renders the frame with a crop border into
//                                    <output dir>/tiles/ as an 8-bit RGBA PNG.
//   merge                            (type "blender")  waits for every tile;
//                                    Blender's Python pastes the tiles into one
//                                    full-size image and saves it.
//
// Tile coordinates in task names are pixel columns (x) and rows (y) counted
// from the top-left corner, as image viewers show them; Blender itself counts
// rows from the bottom, which the Python code below converts to.

const JOB_TYPE = {
  label: "Single Image in Tiles",
  description:
    "Render one frame split into tiles on several workers, then merge the tiles into one 8-bit RGBA PNG. " +
    "Cannot do: compositing and the sequencer are switched off, because each tile would only see its own " +
    "part of the frame (no glare, blur, lens distortion or other whole-frame compositor effects); " +
    "denoising runs per tile and may show seams; EEVEE/Workbench screen-space effects (bloom, " +
    "ambient occlusion, reflections, depth of field) may differ near tile edges; no stereo/multiview, " +
    "no EXR or 16-bit output. Cycles without denoising merges seamlessly.",
  settings: [
    // Chosen by the artist in Blender.
    {
      key: "frame",
      type: "int32",
      required: true,
      eval: "C.scene.frame_current",
      evalInfo: { showLinkButton: true, description: "Current frame" },
      description: "Frame to render",
    },
    {
      key: "tiles_x",
      type: "int32",
      default: 2,
      propargs: { min: 1, max: 16 },
      visible: "submission",
      description: "Number of tile columns (1 to 16)",
    },
    {
      key: "tiles_y",
      type: "int32",
      default: 2,
      propargs: { min: 1, max: 16 },
      visible: "submission",
      description: "Number of tile rows (1 to 16)",
    },

    // render_output_root + add_path_components give render_output_path.
    {
      key: "render_output_root",
      type: "string",
      subtype: "dir_path",
      required: true,
      visible: "submission",
      description:
        "Base directory of where render output is stored. Will have some job-specific parts appended to it",
    },
    {
      key: "add_path_components",
      type: "int32",
      required: true,
      default: 0,
      propargs: { min: 0, max: 32 },
      visible: "submission",
      description: "Number of path components of the current blend file to use in the render output path",
    },
    {
      key: "render_output_path",
      type: "string",
      subtype: "file_path",
      editable: false,
      eval:
        "str(Path(abspath(settings.render_output_root), last_n_dir_parts(settings.add_path_components), jobname, '{timestamp}', '######'))",
      description:
        "Where the merged image is saved ('######' becomes the frame number, '.png' is added); " +
        "the tiles go into a 'tiles' folder next to it",
    },

    // Filled in by the add-on from the scene.
    {
      key: "blendfile",
      type: "string",
      required: true,
      description: "Path of the Blend file to render",
      visible: "web",
    },
    {
      key: "scene",
      type: "string",
      required: true,
      eval: "C.scene.name",
      visible: "web",
      description: "Name of the scene to render.",
    },
    // The tile borders are exact pixel rectangles, so the compiler needs the
    // size Blender will render at.
    {
      key: "resolution_x",
      type: "int32",
      required: true,
      eval: "C.scene.render.resolution_x",
      visible: "hidden",
      description: "Scene resolution X, before the percentage is applied",
    },
    {
      key: "resolution_y",
      type: "int32",
      required: true,
      eval: "C.scene.render.resolution_y",
      visible: "hidden",
      description: "Scene resolution Y, before the percentage is applied",
    },
    {
      key: "resolution_percentage",
      type: "int32",
      required: true,
      eval: "C.scene.render.resolution_percentage",
      visible: "hidden",
      description: "Scene resolution percentage",
    },
  ],
};

const MAX_TILES_PER_AXIS = 16;
const MAX_FRAME = 1048574; // Blender's last frame

// The Python snippets below are passed as command arguments, where workers
// (and Flamenco Managers) expand "{name}" variables.  They therefore contain
// no braces around names, and every path reaches Python as a separate
// argument after "--" instead of being pasted into the code.  A failure
// prints a line starting with "Error: ", like Blender's own, which workers
// show as the task's failure reason, and exits with code 1.

// Run by Blender before rendering one tile.  `tile` holds Blender's
// bottom-up pixel rectangle [x0, x1) × [y0, y1) of a width × height frame.
function tilePython(tile, width, height) {
  return [
    "import sys, bpy",
    "r = bpy.context.scene.render",
    "width = r.resolution_x * r.resolution_percentage // 100",
    "height = r.resolution_y * r.resolution_percentage // 100",
    `if (width, height) != (${width}, ${height}):`,
    `    print("Error: tile: the scene renders at %dx%d pixels, but this job was made for ${width}x${height}; ` +
      `submit the job again after changing the resolution" % (width, height), flush=True)`,
    "    sys.exit(1)",
    "def edge(pixel, size):",
    "    # Blender truncates border * size in 32-bit floats, where pixel / size can",
    "    # land just below `pixel`; aiming at the pixel's middle always truncates right.",
    "    return 0.0 if pixel <= 0 else 1.0 if pixel >= size else (pixel + 0.5) / size",
    "r.use_border = True",
    "r.use_crop_to_border = True",
    `r.border_min_x, r.border_max_x = edge(${tile.x0}, width), edge(${tile.x1}, width)`,
    `r.border_min_y, r.border_max_y = edge(${tile.y0}, height), edge(${tile.y1}, height)`,
    "# The compositor and sequencer would only see this tile, not the frame.",
    "r.use_compositing = False",
    "r.use_sequencer = False",
    "r.use_multiview = False",
    "r.use_file_extension = True",
    "r.use_overwrite = True",
    "r.use_placeholder = False",
    "s = r.image_settings",
    's.file_format = "PNG"',
    's.color_mode = "RGBA"',
    's.color_depth = "8"',
    "s.compression = 15",
  ].join("\n");
}

// Run by Blender after all tiles exist.  Arguments after "--": the tiles
// folder and the merged image's path.  Byte PNGs go through image.pixels and
// image.save() unchanged (no colour transform), so the merge is lossless.
function mergePython(tiles, width, height) {
  const layout = tiles.map((t) => [t.taskName, t.fileName, t.x0, t.y0, t.x1 - t.x0, t.y1 - t.y0]);
  return [
    "import os, sys, bpy",
    "from array import array",
    'tiles_dir, output = sys.argv[sys.argv.index("--") + 1:][:2]',
    `WIDTH, HEIGHT = ${width}, ${height}`,
    "# task name, file name, x0, y0 (Blender counts rows from the bottom), width, height",
    `TILES = ${JSON.stringify(layout)}`,
    "def fail(message):",
    '    print("Error: merge: " + message, flush=True)',
    "    sys.exit(1)",
    "merged = array('f', [0.0]) * (WIDTH * HEIGHT * 4)",
    "for task, name, x0, y0, w, h in TILES:",
    "    path = os.path.join(tiles_dir, name)",
    "    if not os.path.isfile(path):",
    '        fail("tile file %s is missing: task %s has not rendered it. Re-queue task %s, then this merge task" % (path, task, task))',
    "    image = bpy.data.images.load(path)",
    "    if tuple(image.size) == (0, 0):",
    '        fail("tile file %s cannot be read as an image. Re-queue task %s, then this merge task" % (path, task))',
    "    if tuple(image.size) != (w, h) or image.channels != 4:",
    '        fail("tile file %s is %dx%d pixels with %d channels, expected %dx%d RGBA; it was not rendered by this job. Re-queue task %s, then this merge task" % (path, image.size[0], image.size[1], image.channels, w, h, task))',
    "    pixels = array('f', [0.0]) * (w * h * 4)",
    "    image.pixels.foreach_get(pixels)",
    "    bpy.data.images.remove(image)",
    "    row = w * 4",
    "    for y in range(h):",
    "        start = ((y0 + y) * WIDTH + x0) * 4",
    "        merged[start:start + row] = pixels[y * row:(y + 1) * row]",
    'result = bpy.data.images.new("merged", WIDTH, HEIGHT, alpha=True)',
    "result.pixels.foreach_set(merged)",
    "# Write next to the target and rename, so a crash never leaves half an image.",
    'partial = output + ".partial"',
    "result.filepath_raw = partial",
    'result.file_format = "PNG"',
    "result.save()",
    "os.replace(partial, output)",
    "print(\"Saved: '%s'\" % output, flush=True)",
  ].join("\n");
}

function compileJob(job) {
  const settings = job.settings;
  const size = renderSize(settings);
  const tilesX = tileCount(settings, "tiles_x", "columns", size.width, "wide");
  const tilesY = tileCount(settings, "tiles_y", "rows", size.height, "high");
  const frame = settings.frame;
  if (!Number.isInteger(frame) || frame < 0 || frame > MAX_FRAME) {
    // Blender's "-f -3" means "3 frames before the end", so negative frames
    // cannot be rendered from the command line.
    throw `setting frame must be a whole frame number from 0 to ${MAX_FRAME}, got ${JSON.stringify(frame)}`;
  }
  if (!settings.blendfile) {
    throw "setting blendfile is empty: this job type needs the .blend file to render; submit from Blender, or pass --blend FILE on the command line";
  }

  const outputTemplate = expandOutputPath(job);
  settings.render_output_path = outputTemplate; // the real path, with the timestamp
  const outputDir = path.dirname(outputTemplate);
  const mergedImage = path.join(outputDir, withFrameNumber(path.basename(outputTemplate), frame) + ".png");
  const tilesDir = path.join(outputDir, "tiles");

  const tiles = tileLayout(size.width, size.height, tilesX, tilesY, frame);
  const sceneArgs = settings.scene ? ["--scene", settings.scene] : [];
  const tileTasks = tiles.map((tile) => {
    const task = author.Task(tile.taskLabel, "blender");
    task.addCommand(author.Command("blender-render", {
      exe: "{blender}",
      exeArgs: "{blenderArgs}",
      argsBefore: [],
      blendfile: settings.blendfile,
      args: sceneArgs.concat([
        "--python-exit-code", "1",
        "--python-expr", tilePython(tile, size.width, size.height),
        "--render-output", path.join(tilesDir, tile.outputPattern),
        "--render-frame", String(frame),
      ]),
    }, 1));
    job.addTask(task);
    return task;
  });

  const merge = author.Task("merge", "blender");
  merge.addCommand(author.Command("blender-render", {
    exe: "{blender}",
    exeArgs: "{blenderArgs}",
    argsBefore: ["--factory-startup"],
    blendfile: "", // only images are read: no scene needed
    args: [
      "--python-exit-code", "1",
      "--python-expr", mergePython(tiles, size.width, size.height),
      "--", tilesDir, mergedImage,
    ],
  }, 1));
  for (const task of tileTasks) {
    merge.addDependency(task);
  }
  job.addTask(merge);
  print(`${tiles.length} tiles of a ${size.width}x${size.height} image; merged image: ${mergedImage}`);
}

// The size Blender renders at: the resolution scaled by the percentage,
// rounded down like Blender does.
function renderSize(settings) {
  const positive = (key) => {
    const value = settings[key];
    if (!Number.isInteger(value) || value < 1) {
      throw `setting ${key} must be a positive whole number, got ${JSON.stringify(value)}; ` +
        "it is read from the scene when submitting from Blender (or with --blend)";
    }
    return value;
  };
  const percentage = positive("resolution_percentage");
  const width = Math.floor((positive("resolution_x") * percentage) / 100);
  const height = Math.floor((positive("resolution_y") * percentage) / 100);
  if (width < 1 || height < 1) {
    throw `the scene renders at ${width}x${height} pixels at ${percentage}%; raise the resolution percentage`;
  }
  return { width: width, height: height };
}

function tileCount(settings, key, what, pixels, adjective) {
  const count = settings[key];
  if (!Number.isInteger(count) || count < 1 || count > MAX_TILES_PER_AXIS) {
    throw `setting ${key} must be a whole number of tile ${what} from 1 to ${MAX_TILES_PER_AXIS}, ` +
      `got ${JSON.stringify(count)}`;
  }
  if (count > pixels) {
    throw `setting ${key} is ${count}, but the image is only ${pixels} pixels ${adjective}; ` +
      `use at most ${pixels} tile ${what}`;
  }
  return count;
}

// render_output_path with "{timestamp}" filled in.  Other "{...}" parts are
// kept: they can be farm variables that are expanded later.
function expandOutputPath(job) {
  const template = job.settings.render_output_path;
  if (!template) {
    throw "no render_output_path setting!";
  }
  return template.replace(/\{([^}]+)\}/g, (placeholder, name) =>
    name === "timestamp" ? formatTimestampLocal(job.created) : placeholder);
}

// Blender's naming: the last run of '#' becomes the frame number padded to
// the run's length; without '#', four digits are appended.
function withFrameNumber(name, frame) {
  const pad = (width) => String(frame).padStart(width, "0");
  const runs = name.match(/#+/g);
  if (!runs) {
    return name + pad(4);
  }
  const last = name.lastIndexOf(runs[runs.length - 1]);
  const run = runs[runs.length - 1].length;
  return name.slice(0, last) + pad(run) + name.slice(last + run);
}

// Tiles in reading order from the top-left.  Edges are spread evenly
// (floor(i * size / count)), so tile sizes differ by at most one pixel.
function tileLayout(width, height, tilesX, tilesY, frame) {
  const total = tilesX * tilesY;
  const digits = String(total).length;
  const tiles = [];
  for (let row = 0; row < tilesY; row++) {
    const top = Math.floor((row * height) / tilesY);
    const bottom = Math.floor(((row + 1) * height) / tilesY); // exclusive
    for (let col = 0; col < tilesX; col++) {
      const left = Math.floor((col * width) / tilesX);
      const right = Math.floor(((col + 1) * width) / tilesX); // exclusive
      const number = row * tilesX + col + 1;
      const taskName = `tile-${number}-of-${total}`;
      const stem = `tile-${String(number).padStart(digits, "0")}-of-${total}_`;
      tiles.push({
        taskName: taskName,
        taskLabel: `${taskName} (x ${left}-${right - 1}, y ${top}-${bottom - 1})`,
        outputPattern: stem + "######",
        fileName: withFrameNumber(stem + "######", frame) + ".png",
        // Blender's render border counts rows from the bottom.
        x0: left,
        x1: right,
        y0: height - bottom,
        y1: height - top,
      });
    }
  }
  return tiles;
}
