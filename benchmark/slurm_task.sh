# The body of each task of the array that `benchmark/run.py --slurm` writes, after NAME, LOG, CMD (the run's
# command), RUN (its directory) and MAX_STARTS (--max-starts-without-progress). The run must get one SIGTERM (a
# second stops it without a checkpoint). SIGUSR1 before the time limit and a SIGTERM to this shell alone are passed
# on: the run checkpoints, exits 75 and the task requeues itself. Slurm's SIGTERM on requeue, preemption, cancel or
# time-out reaches the run too: not passed on. The run goes in the background, since a trap runs only once `wait`
# returns.
# shellcheck disable=SC2317  # (stop runs from traps)
exec >>"$LOG" 2>&1
export PYTHONUNBUFFERED=1
task=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
say() { echo "[slurm $task $(date +%FT%T)] $*"; }
job_state() { scontrol show job "$task" 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n 1 | cut -d= -f2; }
# the run's newest checkpoint (step_N is complete: renamed into place; N has a fixed width, so ls sorts it)
newest() { ls "$RUN/checkpoints" 2>/dev/null | grep -x 'step_[0-9]*' | tail -n 1; }
say "$NAME starts on $(hostname) (job $SLURM_JOB_ID, restart ${SLURM_RESTART_COUNT:-0}$(nvidia-smi -L 2>/dev/null | tr '\n' ' '))"
say "\$ ${CMD[*]}"
start=$(newest)
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
*) # 75: checkpoint written; other codes (a crash, 74, killed): --resume auto continues from the last checkpoint,
    # which helps only while the run progresses: $STARTS counts this task's failed starts in a row without one
    STARTS=${LOG%.log}.starts
    n=$(sed -n "s/^$task \([0-9]*\)$/\1/p" "$STARTS" 2>/dev/null)
    state=$(job_state)
    if [ -z "$n" ] || [ "$(newest)" != "$start" ]; then n=0; fi
    if [ "$state" = RUNNING ] && [ "$code" -ne 75 ] && [ "$(newest)" = "$start" ]; then n=$((n + 1)); fi
    if [ "$state" != RUNNING ]; then
        say "exit $code: job state $state; Slurm requeues a requeued or preempted job itself"
    elif [ "$n" -ge "$MAX_STARTS" ]; then
        say "exit $code: no progress in $n starts (from ${start:-no checkpoint}): not requeued; run.py --slurm restarts"
    elif ! echo "$task $n" >"$STARTS"; then
        say "exit $code: cannot count the starts without progress in $STARTS: not requeued"
    else
        say "exit $code: requeueing $task, which continues the run ($n of $MAX_STARTS starts without progress)"
        # the requeue sends SIGTERM to this job's processes, scontrol included: it must not die of it
        (trap '' TERM && exec scontrol requeue "$task") || say "scontrol requeue failed: resubmit with run.py --slurm"
    fi
    ;;
esac
exit "$code"
