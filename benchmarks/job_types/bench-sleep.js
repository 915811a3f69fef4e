// Benchmark job type: `count` independent tasks that each sleep `duration_seconds`.
const JOB_TYPE = {
    label: "Benchmark: parallel sleeps",
    description: "Independent sleep tasks, to measure scheduling overhead",
    settings: [
        { key: "count", type: "int32", default: 200, required: true },
        { key: "duration_seconds", type: "float", default: 0.25, required: true },
    ],
};

function compileJob(job) {
    const count = job.settings.count;
    for (let i = 0; i < count; i++) {
        const task = author.Task(`sleep-${i}`, "misc");
        task.addCommand(author.Command("sleep", { duration_in_seconds: job.settings.duration_seconds }));
        job.addTask(task);
    }
}
