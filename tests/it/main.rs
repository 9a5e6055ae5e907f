//! Black-box tests of the real daemon: started on port 0 in-process (or the
//! built binary where a signal or a crash is tested), talking to real HTTP
//! and SMTP servers on loopback.

mod helpers;
mod house;

mod aggregates;
mod attempts;
mod backtest;
mod callbacks;
mod chats;
mod cli;
mod console;
mod crash;
mod delivery;
mod diskfull;
mod easemob;
mod email;
mod hostile;
mod interop;
mod ops;
mod postgres;
mod presend;
mod process;
mod props;
mod reload;
mod replay;
mod replicas;
mod restart;
mod ruletests;
mod schema;
mod secrets;
mod shipped;
mod store;
