//! Old home of the sandbox ids; they live in [`crate::ids`] now (the store needs them too, and
//! must not depend on the runtime). Kept until every caller uses the new path.
pub use crate::ids::{random_bytes, SandboxId};
