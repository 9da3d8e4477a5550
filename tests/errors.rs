//! Every error of the library composes: it is `Error + Send + Sync +
//! 'static`, so `?` turns it into `Box<dyn Error + Send + Sync>` (and into
//! `anyhow::Error`, which asks for the same bounds), with its message kept.

use std::error::Error;
use std::time::Duration;

use quiesce::context::{RecvError, SendError};
use quiesce::leak::LeakError;
use quiesce::pool::Refused;
use quiesce::signals::SignalReceived;
use quiesce::{
    AcquireError, ContextError, GroupError, JobError, LimitError, Pool, SpawnError, SubmitError,
    TrySpawnError,
};

type BoxError = Box<dyn Error + Send + Sync + 'static>;

fn composes<E: Error + Send + Sync + 'static>() {}

#[test]
fn every_error_type_is_send_sync_and_static() {
    composes::<SubmitError>();
    composes::<Refused>();
    composes::<JobError>();
    composes::<AcquireError>();
    composes::<ContextError>();
    composes::<RecvError>();
    composes::<SendError<u32>>();
    composes::<GroupError<std::io::Error>>();
    composes::<SpawnError>();
    composes::<TrySpawnError<fn()>>();
    composes::<LimitError>();
    composes::<LeakError>();
    composes::<SignalReceived>();
}

fn submit_after_shutdown(pool: &Pool) -> Result<(), BoxError> {
    pool.submit(|_ctx| {})?;
    Ok(())
}

#[test]
fn a_refused_submit_goes_through_question_mark_with_its_message() {
    let pool = Pool::builder().workers(1).build().unwrap();
    let _ = pool.shutdown_timeout(Duration::from_secs(10));
    let err = submit_after_shutdown(&pool).unwrap_err();
    assert_eq!(err.to_string(), "job refused: the pool is shutting down");
    // The job is still there for those who want it back.
    let submit = err.downcast::<SubmitError>().expect("a SubmitError");
    assert_eq!(submit.reason, Refused::Closed);
    let ran = submit.into_job().run(&quiesce::Context::background());
    assert!(ran.is_ok());
}
