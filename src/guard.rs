//! The last line of defence against bugs: a panic while handling one peer (a connection, a
//! session, a sandbox's agent) is caught, so the event loop, and everyone else it serves, goes
//! on. Input is validated before it is used, so no input is known to panic; this is for the
//! ones nobody knows about yet.
//!
//! It relies on panics unwinding: `main.rs` refuses to build with `panic = "abort"`.

#[cfg(panic = "abort")]
compile_error!("the server catches panics per connection: build it with panic = \"unwind\"");

use std::any::Any;
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Runs `work`; a panic in it becomes `Err` with the panic's message (the panic hook has
/// already printed it, with its location, to stderr).
///
/// `AssertUnwindSafe`: after a panic the caller throws away the state the panicking handler
/// was working on (it closes the connection, deletes the sandbox); what remains are maps of
/// plain values that are consistent between any two statements.
pub fn catch<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(work)).map_err(|payload| panic_message(payload.as_ref()))
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a panic without a message".to_string()
    }
}

/// Debug builds only, for the tests of this module's callers against the real binary: panics
/// when `input` contains the text of `SANDBOX_TEST_PANIC_ON`. There is no input that panics the
/// server otherwise (that is the point), so the catching has to be shown with an injected one.
/// Release builds compile this to nothing, whatever the environment says.
#[cfg(debug_assertions)]
pub fn test_panic_point(input: &[u8]) {
    use std::sync::OnceLock;
    static MARKER: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    let marker = MARKER.get_or_init(|| {
        std::env::var("SANDBOX_TEST_PANIC_ON")
            .ok()
            .filter(|marker| !marker.is_empty())
            .map(String::into_bytes)
    });
    if let Some(marker) = marker {
        if memchr::memmem::find(input, marker).is_some() {
            panic!("test panic: the input contains SANDBOX_TEST_PANIC_ON");
        }
    }
}

#[cfg(not(debug_assertions))]
pub fn test_panic_point(_input: &[u8]) {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panics_become_errors_with_their_message() {
        assert_eq!(catch(|| 7), Ok(7));
        assert_eq!(
            catch(|| -> u8 { panic!("static text") }),
            Err("static text".into())
        );
        let value = 42;
        assert_eq!(
            catch(|| -> u8 { panic!("formatted {value}") }),
            Err("formatted 42".into())
        );
        assert_eq!(
            catch(|| -> u8 { std::panic::panic_any(5u32) }),
            Err("a panic without a message".into())
        );
        // The kind of bug this guards against.
        let seconds = std::hint::black_box(1e20);
        let error = catch(|| std::time::Duration::from_secs_f64(seconds)).unwrap_err();
        assert!(error.contains("cannot convert float seconds"), "{error}");
    }
}
