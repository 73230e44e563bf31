# The body of every task of the job array that `benchmark/run.py --slurm` writes: that script sets
# NAME (the run), LOG (its log) and CMD (its training command) for the task, then this follows.
#
# The run goes in the background so that this shell can take signals while it waits (a trap runs only
# once `wait` returns), and the run must get exactly one SIGTERM: a second one stops it without a checkpoint.
# - SIGUSR1 (sbatch --signal=B:USR1@T, T seconds before the time limit) reaches this shell alone: passed
#   on to the run as SIGTERM; the run checkpoints and exits 75, and the task requeues itself.
# - SIGTERM when Slurm requeues, preempts, cancels or times out the job reaches every process of the
#   job, the run included, so it is not passed on. Slurm puts a requeued or preempted job back in the
#   queue itself; a cancelled one stays cancelled. A SIGTERM to this shell alone while the job still
#   runs (scancel --batch --signal=TERM) is passed on like SIGUSR1.
# shellcheck disable=SC2317  # (stop_run and on_term run from traps)
exec >>"$LOG" 2>&1
task=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
say() { echo "[slurm $task $(date +%FT%T)] $*"; }
job_state() { scontrol show job "$task" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1 | cut -d= -f2; }

export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1} MKL_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1} PYTHONUNBUFFERED=1
gpus=$(nvidia-smi -L 2>/dev/null | tr '\n' ' ')
say "$NAME starts on $(hostname) (job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}, $OMP_NUM_THREADS CPU thread(s)${gpus:+, $gpus})"
say "\$ ${CMD[*]}"

pid=
stop_run() {
    say "$1: the run writes a checkpoint and exits"
    [ -n "$pid" ] && kill -TERM "$pid" 2>/dev/null
}
on_term() {
    local state
    state=$(job_state)
    if [ "$state" = RUNNING ]; then
        stop_run "SIGTERM to the batch shell alone"
    else
        say "Slurm ends the job (state $state); the run got the SIGTERM as well"
    fi
}
trap 'stop_run "time limit near (SIGUSR1)"' USR1
trap on_term TERM

"${CMD[@]}" &
pid=$!
while :; do
    wait "$pid"
    code=$?
    # a trapped signal ends `wait` early (status > 128) while the run goes on
    if [ "$code" -gt 128 ] && kill -0 "$pid" 2>/dev/null; then continue; fi
    if [ "$code" -gt 128 ]; then
        wait "$pid" 2>/dev/null
        last=$?
        [ "$last" -ne 127 ] && code=$last
    fi
    break
done

case $code in
0) say "exit 0: done" ;;
2) say "exit 2: bad input; not requeued" ;;
3) say "exit 3: diverged; not requeued (the same seed would diverge again)" ;;
*)
    # 75: checkpoint written; other codes (killed): --resume auto continues from the last checkpoint
    state=$(job_state)
    if [ "$state" = RUNNING ]; then
        say "exit $code: requeueing $task, which continues the run"
        # the requeue sends SIGTERM to this job's processes, scontrol included: it must not die of it
        (trap '' TERM && exec scontrol requeue "$task") || say "scontrol requeue failed: resubmit with run.py --slurm"
    else
        say "exit $code: job state $state; Slurm requeues a requeued or preempted job itself"
    fi
    ;;
esac
exit "$code"
