//! `sandbox-server`: configuration from the environment, then the event loop.
#![forbid(unsafe_code)]

fn main() {
    let config = match sandbox::config::Config::from_env() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("sandbox-server: configuration error: {error}");
            std::process::exit(2);
        }
    };
    // Orphaned sandbox processes are re-parented to us, so we can reap them at once (runsc
    // delete otherwise waits seconds for the system's init to do it).
    if let Err(error) = nix::sys::prctl::set_child_subreaper(true) {
        eprintln!("sandbox-server: cannot become a child subreaper: {error}");
        std::process::exit(1);
    }
    let server = match sandbox::server::Server::new(config) {
        Ok(server) => server,
        Err(error) => {
            eprintln!("sandbox-server: cannot start: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = server.run() {
        eprintln!("sandbox-server: {error}");
        std::process::exit(1);
    }
}
