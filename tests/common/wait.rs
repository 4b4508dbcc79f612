//! Waiting for something to happen, never for a fixed time.
//!
//! - [`eventually!`]: polls a condition until it holds, and fails after a
//!   generous bound saying what did not happen and within what. The condition
//!   may `.await`; `blocking` polls from a plain thread instead.
//! - [`within`]: awaits a future, failing if it takes longer than a bound (a hang
//!   fails the test instead of stalling it).
//! - [`until_idle`]: on paused time, waits until no task of the runtime can make
//!   progress (for "nothing more happens" checks without a fixed wait).
//!
//! Polling every [`INTERVAL`] is not a fixed wait: the condition is checked again
//! and again, and the wait ends as soon as it holds. The bounds only decide how
//! long a broken build takes to fail.
//!
//! The async forms use tokio's clock, so on paused time (`start_paused = true`)
//! their bounds are in virtual time too; `blocking` uses the real clock.

use std::future::Future;
use std::time::Duration;

/// How long [`eventually!`] waits unless told otherwise.
pub const DEADLINE: Duration = Duration::from_secs(10);
/// How often [`eventually!`] checks its condition.
pub const INTERVAL: Duration = Duration::from_millis(5);

/// Polls a condition until it holds; panics with the message after the bound.
///
/// - `eventually!(cond, "what {}", x)`: waits up to [`DEADLINE`];
/// - `eventually!(within BOUND => cond, "what")`: waits up to `BOUND`;
/// - `eventually!(blocking within BOUND => cond, "what")`: the same from a
///   thread that must not (or cannot) await.
///
/// `cond` is evaluated again on every poll and may contain `.await`. It is a
/// `bool`, or an `Option<T>`: then the macro's value is the `T` of the first
/// `Some`. The message is formatted only on failure, so it can show the state
/// the condition last saw.
macro_rules! eventually {
    (blocking within $bound:expr => $cond:expr, $($what:tt)+) => {{
        let bound: ::std::time::Duration = $bound;
        let deadline = ::std::time::Instant::now() + bound;
        loop {
            if let ::std::option::Option::Some(done) =
                $crate::common::wait::Outcome::done($cond)
            {
                break done;
            }
            if ::std::time::Instant::now() >= deadline {
                $crate::common::wait::gave_up(bound, ::std::format!($($what)+));
            }
            ::std::thread::sleep($crate::common::wait::INTERVAL);
        }
    }};
    (within $bound:expr => $cond:expr, $($what:tt)+) => {{
        let bound: ::std::time::Duration = $bound;
        let deadline = ::tokio::time::Instant::now() + bound;
        loop {
            if let ::std::option::Option::Some(done) =
                $crate::common::wait::Outcome::done($cond)
            {
                break done;
            }
            if ::tokio::time::Instant::now() >= deadline {
                $crate::common::wait::gave_up(bound, ::std::format!($($what)+));
            }
            ::tokio::time::sleep($crate::common::wait::INTERVAL).await;
        }
    }};
    ($cond:expr, $($what:tt)+) => {
        $crate::common::wait::eventually!(
            within $crate::common::wait::DEADLINE => $cond, $($what)+
        )
    };
}
pub(crate) use eventually;

/// What an [`eventually!`] condition can be: done or not, with a value.
pub trait Outcome {
    type Value;
    fn done(self) -> Option<Self::Value>;
}

impl Outcome for bool {
    type Value = ();
    fn done(self) -> Option<()> {
        self.then_some(())
    }
}

impl<T> Outcome for Option<T> {
    type Value = T;
    fn done(self) -> Option<T> {
        self
    }
}

/// The failure of an [`eventually!`].
#[track_caller]
pub fn gave_up(bound: Duration, what: String) -> ! {
    panic!("did not happen within {bound:?}: {what}")
}

/// Awaits `fut`, panicking with `what` if it takes longer than `bound`.
pub async fn within<F: Future>(bound: Duration, what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(bound, fut).await {
        Ok(out) => out,
        Err(_) => panic!("timed out after {bound:?}: {what}"),
    }
}

/// Returns once no task of this runtime can make progress any more: every one
/// is waiting for something that only another end, or a timer, can bring.
///
/// Only on paused time: the clock then moves only when the runtime is idle, so
/// this one-tick sleep ends exactly then (after any timer due within the tick).
/// On real time it would be a fixed wait, so it panics.
pub async fn until_idle() {
    // `advance` panics unless the clock is paused; by zero it changes nothing.
    tokio::time::advance(Duration::ZERO).await;
    tokio::time::sleep(Duration::from_millis(1)).await;
}
