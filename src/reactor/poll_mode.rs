//! How a reactor waits when it has nothing to do: the one poll-mode enum, used by
//! `sds serve --poll`, `sds perf --poll` and `framework_get_reactors`. It lives below the
//! reactor so that nothing in the data path points up at start-up code.

use clap::ValueEnum;

/// How a reactor waits when it has nothing to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, ValueEnum)]
pub enum PollMode {
    /// Reactors spin without sleeping, like SPDK: lowest latency, their CPU time is wall time
    Busy,
    /// Reactors poll up to 100 µs after their last work while they wait for hosts (20 µs while LUN I/O is in flight), then sleep in the kernel until a completion or a message arrives
    #[default]
    Adaptive,
}

impl PollMode {
    /// The name on the command line and in RPC results.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Busy => "busy",
            Self::Adaptive => "adaptive",
        }
    }
}
