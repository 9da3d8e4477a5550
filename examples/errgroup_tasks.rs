//! Five sites' weekly ePRO exports collected side by side; one fails and
//! the others stop: Go's `errgroup.WithContext`.
//!
//! # The Go pattern
//!
//! Every task runs in its own goroutine under a shared context. The first
//! one to return an error cancels that context, the others notice at their
//! next `select` and return, and `Wait` gives back the first error:
//!
//! ```go
//! g, ctx := errgroup.WithContext(context.Background())
//! for site := 1; site <= 5; site++ {
//!     g.Go(func() error {
//!         for step := 1; step <= 30; step++ {
//!             if site == 3 && step == 2 {
//!                 return errors.New("export is corrupt") // which task? the error must say
//!             }
//!             select {
//!             case <-time.After(100 * time.Millisecond): // one chunk of the export
//!             case <-ctx.Done():
//!                 return ctx.Err()
//!             }
//!         }
//!         return nil
//!     })
//! }
//! if err := g.Wait(); err != nil {
//!     fmt.Println("collection failed:", err)
//! }
//! ```
//!
//! # The Rust way
//!
//! [`Group::with_context`] returns the group and its [`Context`].
//! [`Group::spawn`] starts each task on a thread named after it (`task-3`),
//! and the task gets the group's context. The first task to return `Err`
//! (or to panic) cancels that context; [`Context::sleep`] in the siblings
//! returns `Canceled` at once and they return too. [`Group::wait_timeout`]
//! joins every thread (within a bound) and returns the first failure as a
//! [`GroupError`] that names the task, so the error need not say it.
//!
//! Two differences from Go: a task spawned after the group was cancelled is
//! not started at all (`spawn` says so), and a panic is caught, named and
//! returned like an error instead of ending the program. With
//! [`Group::set_limit`] at most that many tasks run at once.
//!
//! Each task also records its own outcome, printed in task order at the
//! end: the group's error is the first failure, and the siblings'
//! "cancelled" errors are not mistaken for it.
//!
//! # Running it
//!
//! ```text
//! cargo run --example errgroup_tasks
//! cargo run --example errgroup_tasks -- --fail-task 0 --step-ms 5   # nothing fails
//! ```
//!
//! It exits 0 when the group behaves as an errgroup should: the failing
//! task's error comes back from `wait` and the others stopped; or, with
//! `--fail-task 0`, every task completes.

use std::collections::BTreeMap;
use std::fmt;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use quiesce::{Context, ContextError, Group, GroupError, group::Waited};

/// A generous bound on the whole group.
const WAIT_TIMEOUT: Duration = Duration::from_secs(30);

/// How many tasks (sites).
const TASKS: u32 = 5;

struct Options {
    /// The task that fails at its second step; `None` for none.
    fail_task: Option<u32>,
    steps: u32,
    step: Duration,
}

/// Why a task stopped.
#[derive(Debug)]
enum TaskError {
    /// The site's export is unusable.
    Corrupt { site: u32, step: u32 },
    /// The group's context was done (a sibling failed).
    Stopped { step: u32, why: ContextError },
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Corrupt { site, step } => write!(
                f,
                "site {site}'s export is corrupt (checksum mismatch at chunk {step})"
            ),
            TaskError::Stopped { step, why } => write!(f, "stopped at chunk {step}: {why}"),
        }
    }
}

/// Each task's outcome, by task number, as the task itself saw it.
type Outcomes = Arc<Mutex<BTreeMap<u32, String>>>;

fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(options) => options,
        Err(msg) => {
            eprintln!("errgroup_tasks: {msg}");
            eprintln!("usage: errgroup_tasks [--fail-task N] [--steps N] [--step-ms N]");
            return ExitCode::from(2);
        }
    };
    println!(
        "collecting {TASKS} sites' exports, {} chunks of {:?} each; {}",
        options.steps,
        options.step,
        options
            .fail_task
            .map_or("no task fails".to_string(), |t| format!(
                "task-{t} fails at chunk 2"
            ))
    );
    let started = Instant::now();
    let outcomes: Outcomes = Arc::default();

    let (group, _ctx) = Group::<u32, TaskError>::with_context(&Context::background());
    for task in 1..=TASKS {
        let outcomes_for_task = outcomes.clone();
        let fails = options.fail_task == Some(task);
        let (steps, step) = (options.steps, options.step);
        let spawned = group.spawn(format!("task-{task}"), move |ctx| {
            let result = collect_export(ctx, task, fails, steps, step);
            let outcome = match &result {
                Ok(chunks) => format!("completed ({chunks} chunks)"),
                Err(err @ TaskError::Corrupt { .. }) => format!("failed: {err}"),
                Err(err @ TaskError::Stopped { .. }) => format!("cancelled: {err}"),
            };
            outcomes_for_task.lock().insert(task, outcome);
            result
        });
        if let Err(err) = spawned {
            // The group was cancelled before this task could start: Go would
            // start it anyway; quiesce does not.
            outcomes.lock().insert(task, format!("not started: {err}"));
        }
    }

    let result = match group.wait_timeout(WAIT_TIMEOUT) {
        Waited::Done(result) => result,
        Waited::Running(group) => {
            for task in group.running() {
                eprintln!("errgroup_tasks: still running: {task}");
            }
            // Dropping the group would wait for them: leave at once instead.
            std::process::exit(1);
        }
    };
    let elapsed = started.elapsed();

    for (task, outcome) in outcomes.lock().iter() {
        println!("task-{task}: {outcome}");
    }
    let as_expected = match (&result, options.fail_task) {
        (Ok(chunks), None) => {
            println!("group: every task completed ({chunks:?} chunks) in {elapsed:.2?}");
            chunks.len() == TASKS as usize
        }
        (Err(err), Some(fail_task)) => {
            println!("group error: {err} (after {elapsed:.2?})");
            let others_stopped = outcomes
                .lock()
                .iter()
                .all(|(task, outcome)| *task == fail_task || !outcome.starts_with("completed"));
            matches!(err, GroupError::Failed { task, .. } if *task == format!("task-{fail_task}"))
                && others_stopped
        }
        (Ok(_), Some(_)) => {
            println!("group: no error, yet a task was meant to fail");
            false
        }
        (Err(err), None) => {
            println!("group error: {err}");
            false
        }
    };

    if let Err(leaked) = quiesce::leak::check_all(Duration::from_secs(5)) {
        eprintln!("errgroup_tasks: {leaked}");
        return ExitCode::FAILURE;
    }
    if as_expected {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// The simulated collection: `steps` chunks of `step` each, checking the
/// group's context between chunks. The failing task finds its export
/// corrupt at the second chunk.
fn collect_export(
    ctx: &Context,
    site: u32,
    fails: bool,
    steps: u32,
    step: Duration,
) -> Result<u32, TaskError> {
    for chunk in 1..=steps {
        if fails && chunk == 2 {
            return Err(TaskError::Corrupt { site, step: chunk });
        }
        ctx.sleep(step)
            .map_err(|why| TaskError::Stopped { step: chunk, why })?;
    }
    Ok(steps)
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        fail_task: Some(3),
        steps: 30,
        step: Duration::from_millis(100),
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if !["--fail-task", "--steps", "--step-ms"].contains(&arg.as_str()) {
            return Err(format!("unknown argument: {arg}"));
        }
        let value = args.next().ok_or(format!("{arg} needs a value"))?;
        let n: u32 = value
            .parse()
            .map_err(|_| format!("{arg}: not a number: {value}"))?;
        match arg.as_str() {
            "--fail-task" if n > TASKS => {
                return Err(format!("--fail-task: 0 (none) or 1 to {TASKS}"));
            }
            "--fail-task" => options.fail_task = (n > 0).then_some(n),
            "--steps" if n < 2 => return Err("--steps must be at least 2".into()),
            "--steps" => options.steps = n,
            "--step-ms" => options.step = Duration::from_millis(u64::from(n)),
            _ => unreachable!("checked above"),
        }
    }
    Ok(options)
}
