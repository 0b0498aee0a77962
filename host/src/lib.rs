//! arp-host: hosts ARP agents for many tenants. Each inbound envelope is verified, decided
//! by the tenant's policy (a WebAssembly component, see [`pdp`]), audited and delivered.
//!
//! Where to start reading: [`pdp::engine`] runs one policy decision; [`cli`] is every
//! command of the `arp-host` binary; [`runner`] is the local policy runner; [`http`] is
//! the server's routes; [`dispatch`] is the `POST /didcomm` pipeline; [`delivery`] pushes
//! queued messages to connected agents; [`store`] is the persistence layer (SQLite or
//! Postgres).

pub mod admin_client;
pub mod agent_client;
pub mod audit;
pub mod cli;
pub mod clock;
pub mod config;
pub mod connection;
pub mod context_cache;
pub mod delivery;
pub mod demo;
pub mod did;
pub mod did_web;
pub mod dispatch;
pub mod envelope;
pub mod http;
pub mod logging;
pub mod mapping;
pub mod metrics;
pub mod pdp;
pub mod peers;
pub mod provision;
pub mod recorder;
pub mod routing;
pub mod runner;
pub mod server;
pub mod store;
