// SPDX-License-Identifier: GPL-3.0-or-later
//
// Echo Sleep Test: a job type for trying out a farm without Blender.
// One task echoes a message; then `sleep_repeats` tasks each sleep for
// `sleep_duration_seconds`.  The sleep tasks only wait for the echo task, so
// several workers can sleep at the same time.
//
// Compatible with Flamenco 3's built-in job type of the same name: the
// JOB_TYPE below has the same content, so its etag is the same
// (eba586e16d6b55baaa43e32f9e78ae514b457fee) and a Blender add-on that cached
// it from a Flamenco Manager can submit here unchanged.
//
// Example submission (settings only):
//   {"message": "hello farm", "sleep_duration_seconds": 3, "sleep_repeats": 2}

const JOB_TYPE = {
  label: "Echo Sleep Test",
  settings: [
    { key: "message", type: "string", required: true },
    { key: "sleep_duration_seconds", type: "int32", default: 1 },
    { key: "sleep_repeats", type: "int32", default: 1 },
  ],
};

function compileJob(job) {
  const settings = job.settings;

  const echo = author.Task("echo", "misc");
  echo.addCommand(author.Command("echo", { message: settings.message }));
  job.addTask(echo);

  // Defaults are hints for the submitter, not applied by the farm: without
  // `sleep_repeats` this loop does not run and the job is just the echo.
  for (let i = 0; i < settings.sleep_repeats; i++) {
    const sleep = author.Task("sleep", "misc");
    sleep.addCommand(author.Command("sleep", { duration_in_seconds: settings.sleep_duration_seconds }));
    sleep.addDependency(echo);
    job.addTask(sleep);
  }
}
