//! Schedules: cron jobs in tokio-cron-scheduler whose only work is to put a command on the daemon's channel, naming
//! the scheduled time the tick belongs to (so that the run queue queues each scheduled time once, whichever
//! process's clock fired it). Only cron jobs are used (its repeated-interval jobs have an open bug that stops them
//! under load).

use tokio::sync::mpsc;
use tokio_cron_scheduler::{Job, JobScheduler};
use uuid::Uuid;

use super::Command;
use crate::queue::Trigger;
use crate::schedule::{due_time, Schedule};
use crate::store::Export;

pub struct Scheduler {
    inner: JobScheduler,
    jobs: Vec<Uuid>,
    tz: chrono_tz::Tz,
    /// The zone's UTC offset when the jobs were made: the library fixes it per job, so the jobs are remade when
    /// daylight saving time changes it.
    offset: i32,
}

fn utc_offset(tz: chrono_tz::Tz) -> i32 {
    use chrono::Offset;
    chrono::Utc::now().with_timezone(&tz).offset().fix().local_minus_utc()
}

#[derive(Debug, thiserror::Error)]
#[error("scheduler: {0}")]
pub struct SchedulerError(String);

fn err(e: impl std::fmt::Display) -> SchedulerError {
    SchedulerError(e.to_string())
}

/// A cron job that sends `command()` on `tx` at every tick.
fn command_job(
    expr: &str,
    tz: chrono_tz::Tz,
    tx: mpsc::Sender<Command>,
    command: impl Fn() -> Command + Send + Sync + 'static,
) -> Result<Job, SchedulerError> {
    let command = std::sync::Arc::new(command);
    Job::new_async_tz(expr, tz, move |_, _| {
        let (tx, command) = (tx.clone(), command.clone());
        Box::pin(async move {
            let _ = tx.send(command()).await;
        })
    })
    .map_err(err)
}

impl Scheduler {
    pub async fn start(tz: chrono_tz::Tz) -> Result<Scheduler, SchedulerError> {
        let inner = JobScheduler::new().await.map_err(err)?;
        inner.start().await.map_err(err)?;
        Ok(Scheduler { inner, jobs: vec![], tz, offset: utc_offset(tz) })
    }

    /// Replaces every job: the refresh schedule (for exports on `refresh`) and one job per export with its own
    /// cron expression.
    pub async fn set_jobs(
        &mut self,
        refresh: &str,
        exports: &[Export],
        tx: &mpsc::Sender<Command>,
    ) -> Result<(), SchedulerError> {
        self.offset = utc_offset(self.tz);
        for id in self.jobs.drain(..) {
            self.inner.remove(&id).await.map_err(err)?;
        }
        if exports.iter().any(|e| e.enabled && Schedule::parse(&e.schedule) == Ok(Schedule::Refresh)) {
            let (expr, tz) = (refresh.to_string(), self.tz);
            let job = command_job(refresh, self.tz, tx.clone(), move || Command::RunAll {
                trigger: Trigger::Schedule,
                refresh_only: true,
                due_at: due_time(&expr, tz),
            })?;
            self.jobs.push(self.inner.add(job).await.map_err(err)?);
        }
        for e in exports.iter().filter(|e| e.enabled) {
            if let Ok(Schedule::Cron(expr)) = Schedule::parse(&e.schedule) {
                let (name, tz, cron) = (e.name.clone(), self.tz, expr.clone());
                let job = command_job(&expr, self.tz, tx.clone(), move || Command::Run {
                    export: name.clone(),
                    trigger: Trigger::Schedule,
                    due_at: due_time(&cron, tz),
                })?;
                self.jobs.push(self.inner.add(job).await.map_err(err)?);
            }
        }
        Ok(())
    }

    /// Whether the time zone's offset changed (daylight saving time) since the jobs were made.
    pub fn offset_changed(&self) -> bool {
        utc_offset(self.tz) != self.offset
    }

    pub async fn shutdown(&mut self) {
        let _ = self.inner.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// A schedule must keep firing while the runtime is busy: every tick of an every-second cron over many
    /// seconds, with CPU-bound tasks hogging the worker threads between awaits.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cron_schedule_keeps_firing_under_load_over_many_ticks() {
        let (tx, mut rx) = mpsc::channel(64);
        let mut s = Scheduler::start(chrono_tz::UTC).await.unwrap();
        let job = command_job("* * * * * *", chrono_tz::UTC, tx, || Command::Reload { reread_config: false }).unwrap();
        s.jobs.push(s.inner.add(job).await.unwrap());
        // One hog per worker thread: enough to keep the runtime busy, without starving the other tests that run
        // beside this one on a small machine.
        let stop = Instant::now() + Duration::from_secs(6);
        let load: Vec<_> = (0..2)
            .map(|_| {
                tokio::spawn(async move {
                    while Instant::now() < stop {
                        // Busy for 20 ms at a time without yielding, then yield.
                        let t = Instant::now();
                        while t.elapsed() < Duration::from_millis(20) {
                            std::hint::black_box(0u64.wrapping_add(1));
                        }
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        let mut ticks = 0;
        while Instant::now() < stop {
            if tokio::time::timeout(Duration::from_millis(200), rx.recv()).await.is_ok_and(|c| c.is_some()) {
                ticks += 1;
            }
        }
        for l in load {
            l.await.unwrap();
        }
        s.shutdown().await;
        assert!(ticks >= 4, "only {ticks} ticks in 6 seconds under load");
    }
}
