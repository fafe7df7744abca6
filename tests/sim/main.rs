//! Deterministic simulators (issue 18): seeded virtual clients on virtual time, first against one connection's
//! core (`core`), then against a whole endpoint through a virtual shell and virtual sockets (`endpoint`, `net`).
//! `WSKIT_SIM_SEEDS=N` runs more seeds, `WSKIT_SIM_SEED=S` replays one, `WSKIT_SIM_TRACE=1` shows every step.

mod attacks;
mod client;
mod core;
mod endpoint;
mod net;
mod scale;
