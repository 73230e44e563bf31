# The body of each task of the array that `benchmark/run.py --slurm` writes, after NAME, LOG and CMD (the run's
# command). The run must get one SIGTERM (a second stops it without a checkpoint). SIGUSR1 before the time limit
# and a SIGTERM to this shell alone are passed on: the run checkpoints, exits 75 and the task requeues itself.
# Slurm's SIGTERM on requeue, preemption, cancel or time-out reaches the run too: not passed on. The run goes in
# the background, since a trap runs only once `wait` returns.
# shellcheck disable=SC2317  # (stop runs from traps)
exec >>"$LOG" 2>&1
export PYTHONUNBUFFERED=1
task=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
say() { echo "[slurm $task $(date +%FT%T)] $*"; }
job_state() { scontrol show job "$task" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1 | cut -d= -f2; }
say "$NAME starts on $(hostname) (job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}$(nvidia-smi -L 2>/dev/null | tr '\n' ' '))"
say "\$ ${CMD[*]}"
stop() { say "$1: the run writes a checkpoint and exits" && kill -TERM "$pid" 2>/dev/null; }
trap 'stop "time limit near (SIGUSR1)"' USR1
trap '[ "$(job_state)" = RUNNING ] && stop "SIGTERM to the batch shell alone" ||
    say "Slurm ends the job (state $(job_state)); the run got the SIGTERM as well"' TERM
"${CMD[@]}" &
pid=$!
# a trapped signal ends `wait` early (status > 128) while the run goes on: wait again
while wait "$pid"; code=$?; [ "$code" -gt 128 ] && kill -0 "$pid" 2>/dev/null; do :; done
[ "$code" -gt 128 ] && { wait "$pid" 2>/dev/null; last=$?; [ "$last" -ne 127 ] && code=$last; }
case $code in
0) say "exit 0: done" ;;
2 | 3) say "exit $code: bad input (2) or diverged (3, the same seed would again): not requeued" ;;
*) # 75: checkpoint written; other codes (killed): --resume auto continues from the last checkpoint
    if [ "$(job_state)" = RUNNING ]; then
        say "exit $code: requeueing $task, which continues the run"
        # the requeue sends SIGTERM to this job's processes, scontrol included: it must not die of it
        (trap '' TERM && exec scontrol requeue "$task") || say "scontrol requeue failed: resubmit with run.py --slurm"
    else
        say "exit $code: job state $(job_state); Slurm requeues a requeued or preempted job itself"
    fi
    ;;
esac
exit "$code"
