// SPDX-License-Identifier: GPL-3.0-or-later
//
// Simple Blender Render: render a frame range in chunks, then (when the image
// format allows it) make a preview video of the frames with FFmpeg.
//
// Compatible with Flamenco 3's built-in job type of the same name.  The
// JOB_TYPE below has the same content as Flamenco's, so the etag is the same
// (6f6b4fce9301252a6ab4a9a213a2f0ad447eccd5) and Blender add-ons that cached
// the job type from a Flamenco Manager can submit here.  Changing anything in
// JOB_TYPE changes the etag; changing compileJob() does not.
//
// Tasks produced, in this order:
//   render-<chunk>  (type "blender")  one per chunk of `chunk_size` frames,
//                                     independent, so they render in parallel;
//   preview-video   (type "ffmpeg")   waits for every render task.

const JOB_TYPE = {
  label: "Simple Blender Render",
  description: "Render a sequence of frames, and create a preview video file",
  settings: [
    // Chosen by the artist in Blender.
    {
      key: "frames",
      type: "string",
      required: true,
      eval: "f'{C.scene.frame_start}-{C.scene.frame_end}'",
      evalInfo: { showLinkButton: true, description: "Scene frame range" },
      description: "Frame range to render. Examples: '47', '1-30', '3, 5-10, 47-327'",
    },
    {
      key: "chunk_size",
      type: "int32",
      default: 1,
      description: "Number of frames to render in one Blender render task",
      visible: "submission",
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
      description: "Final file path of where render output will be saved",
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
      key: "fps",
      type: "float",
      eval: "C.scene.render.fps / C.scene.render.fps_base",
      visible: "hidden",
    },
    {
      key: "format",
      type: "string",
      required: true,
      eval: "C.scene.render.image_settings.file_format",
      visible: "web",
    },
    {
      key: "image_file_extension",
      type: "string",
      required: true,
      eval: "C.scene.render.file_extension",
      visible: "hidden",
      description: "File extension used when rendering images",
    },
    {
      key: "has_previews",
      type: "bool",
      required: false,
      eval: "C.scene.render.image_settings.use_preview",
      visible: "hidden",
      description: "Whether Blender will render preview images.",
    },
    {
      key: "scene",
      type: "string",
      required: true,
      eval: "C.scene.name",
      visible: "web",
      description: "Name of the scene to render.",
    },
  ],
};

// Blender writes these as movies; this job type renders image sequences only.
const MOVIE_FORMATS = ["FFMPEG", "AVI_RAW", "AVI_JPEG"];

// FFmpeg cannot read these; the video is then made from Blender's JPEG previews.
const FORMATS_FFMPEG_CANNOT_READ = ["EXR", "MULTILAYER", "OPEN_EXR", "OPEN_EXR_MULTILAYER"];

// Run by Blender before rendering: always add the file extension, never
// overwrite frames that exist (so a re-queued task resumes), no placeholders.
const RENDER_SETTINGS_PY = [
  "import bpy",
  "r = bpy.context.scene.render",
  "r.use_file_extension = True",
  "r.use_overwrite = False",
  "r.use_placeholder = False",
].join("; ");

const FFMPEG_ENCODER_ARGS = [
  "-c:v", "h264", "-crf", "20", "-g", "18",
  "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2", // H.264 needs even dimensions
  "-pix_fmt", "yuv420p",
];

function compileJob(job) {
  const settings = job.settings;
  if (MOVIE_FORMATS.includes(settings.format)) {
    throw `This job type only renders images, and not "${settings.format}"`;
  }

  const renderOutput = expandOutputPath(job);
  // Store the real path, so the job shows where the frames went.
  settings.render_output_path = renderOutput;
  const renderDir = path.dirname(renderOutput);

  const renderTasks = makeRenderTasks(settings, renderDir, renderOutput);
  for (const task of renderTasks) {
    job.addTask(task);
  }

  const videoTask = makePreviewVideoTask(settings, renderDir);
  if (videoTask) {
    for (const task of renderTasks) {
      videoTask.addDependency(task);
    }
    job.addTask(videoTask);
  }
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

function makeRenderTasks(settings, renderDir, renderOutput) {
  const sceneArgs = settings.scene ? ["--scene", settings.scene] : [];
  const outputArg = path.join(renderDir, path.basename(renderOutput));

  return frameChunker(settings.frames, settings.chunk_size).map((chunk) => {
    const task = author.Task(`render-${chunk}`, "blender");
    const args = sceneArgs.concat([
      "--python-expr", RENDER_SETTINGS_PY,
      "--render-output", outputArg,
      "--render-format", settings.format,
      "--render-frame", chunk.replaceAll("-", ".."), // Blender spells ranges A..B
    ]);
    task.addCommand(author.Command("blender-render", {
      exe: "{blender}",
      exeArgs: "{blenderArgs}",
      argsBefore: [],
      blendfile: settings.blendfile,
      args: args,
    }, frameCount(chunk)));
    return task;
  });
}

// The preview-video task, or undefined when no video can be made.
function makePreviewVideoTask(settings, renderDir) {
  const usePreviews = FORMATS_FFMPEG_CANNOT_READ.includes(settings.format);
  if (usePreviews && !settings.has_previews) {
    print(`Not making a preview video: FFmpeg cannot read ${settings.format} images and Blender renders no previews`);
    return undefined;
  }
  if (!settings.fps) {
    print("Not making a preview video: the job has no fps setting");
    return undefined;
  }

  // A video has no gaps: "1-10,20-30" becomes "1-30" in its name.
  let frames = `${settings.frames}`;
  if (frames.includes(",")) {
    const single = frameChunker(settings.frames, 1);
    frames = `${single[0]}-${single[single.length - 1]}`;
  }
  const stem = path.stem(settings.blendfile).replace(".flamenco", "");
  const imageExtension = usePreviews ? ".jpg" : settings.image_file_extension;

  const task = author.Task("preview-video", "ffmpeg");
  task.addCommand(author.Command("frames-to-video", {
    exe: "ffmpeg",
    fps: settings.fps,
    inputGlob: path.join(renderDir, `*${imageExtension}`),
    outputFile: path.join(renderDir, `${stem}-${frames}.mp4`),
    args: FFMPEG_ENCODER_ARGS.concat(["-r", settings.fps, "-y"]),
  }));
  return task;
}
