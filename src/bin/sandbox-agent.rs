//! Entry point of the agent that runs as PID 1 inside every sandbox (the `sandbox-agent` crate,
//! `agent/`). It lives in this package so that the binary sits next to `sandbox-server`, where
//! the server, the tests and the Dockerfile look for it.
#![forbid(unsafe_code)]

fn main() {
    let argument = std::env::args().nth(1);
    // The same binary is the files API's helper process (agent/src/files.rs).
    if argument.as_deref() == Some(sandbox_agent::files::HELPER_FLAG) {
        let request = std::env::args().nth(2);
        std::process::exit(sandbox_agent::files::helper_main(request.as_deref()));
    }
    std::process::exit(sandbox_agent::main(argument.as_deref()));
}
