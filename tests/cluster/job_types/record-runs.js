// Test job type: `count` independent tasks; each sleeps a moment, then appends
// one line to its own file, so a test can count how often every task ran.
const JOB_TYPE = {
    label: "Test: record runs",
    settings: [
        { key: "count", type: "int32", default: 60, required: true },
        { key: "out_dir", type: "string", required: true },
        { key: "python", type: "string", required: true },
        { key: "seconds", type: "float", default: 0.3, required: true },
    ],
};

function compileJob(job) {
    const s = job.settings;
    for (let i = 0; i < s.count; i++) {
        const task = author.Task(`run-${i}`, "misc");
        const code = "import sys, time; time.sleep(float(sys.argv[2])); " +
                     "open(sys.argv[1], 'a').write('ran %.3f\\n' % time.time())";
        task.addCommand(author.Command("exec", {
            exe: s.python, args: ["-c", code, path.join(s.out_dir, `task-${i}.txt`), String(s.seconds)],
        }));
        job.addTask(task);
    }
}
