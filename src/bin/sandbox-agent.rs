//! Entry point of the agent that runs as PID 1 inside every sandbox (see `sandbox::agent`).
#![forbid(unsafe_code)]

fn main() {
    // First, while the agent is still a single thread (capabilities belong to a thread).
    if let Err(error) = sandbox::agent::identity::take_identity() {
        eprintln!("sandbox-agent: cannot take its identity: {error}");
        std::process::exit(1);
    }
    let config = match std::env::args().nth(1) {
        Some(json) => match serde_json::from_str(&json) {
            Ok(config) => config,
            Err(error) => {
                eprintln!("sandbox-agent: bad configuration argument: {error}");
                std::process::exit(2);
            }
        },
        None => sandbox::agent::AgentConfig::default(),
    };
    let agent = match sandbox::agent::Agent::new(config) {
        Ok(agent) => agent,
        Err(error) => {
            eprintln!("sandbox-agent: cannot start: {error}");
            std::process::exit(1);
        }
    };
    if let Err(error) = agent.run() {
        eprintln!("sandbox-agent: {error}");
        std::process::exit(1);
    }
}
