//! `arp-policy-sdk`: write an ARP tenant policy as plain Rust, export it as a WebAssembly
//! component with one macro.
//!
//! A policy is a type that implements [`Policy`]: a pure function from a [`Request`] to a
//! [`Decision`], plus an optional one-time warm-up [`Policy::init`].
//! [`export_policy!`] turns it into the `policy` world of `wit/policy.wit`
//! (`arp:policy@0.1.0`); built with `cargo build --release --target wasm32-wasip2` as a
//! `cdylib`, the crate is a component that `arp-host` can run. The generated WIT bindings
//! stay inside this crate: a policy only sees the plain types of this crate, with the JSON
//! texts of the contract (attributes, context, obligation parameters) already parsed into
//! [`serde_json::Value`]s. If the host ever sends JSON that does not parse, the glue answers
//! a deny with the reason `invalid_request_json: ...` without asking the policy.
//!
//! The same code compiles natively, so a policy is unit-tested with plain `cargo test`:
//! build a [`Request`] with [`Request::new`] and the `with_*` setters and call
//! [`Policy::evaluate`] directly.
//!
//! # Example
//!
//! `Cargo.toml` of a policy crate:
//!
//! ```toml
//! [lib]
//! # The component. Unit tests still run natively; adding "rlib" would make cargo
//! # silently skip `lto` for the crate.
//! crate-type = ["cdylib"]
//!
//! [dependencies]
//! arp-policy-sdk = { path = "../policy-sdk" }
//! serde_json = "1"
//! ```
//!
//! `src/lib.rs`:
//!
//! ```
//! use arp_policy_sdk::{Decision, Policy, Request};
//!
//! /// Lets agents read anything in Project "alpha"; every read must be logged.
//! pub struct ReadAlpha;
//!
//! impl Policy for ReadAlpha {
//!     fn evaluate(request: &Request) -> Decision {
//!         let in_alpha = request
//!             .target
//!             .parents
//!             .iter()
//!             .any(|parent| parent.kind == "Project" && parent.id == "alpha");
//!         if request.action == "read" && in_alpha {
//!             Decision::allow()
//!                 .fired("read_alpha")
//!                 .obligation("log_access", serde_json::json!({ "level": "full" }))
//!         } else {
//!             Decision::deny().reason("only reads in Project alpha")
//!         }
//!     }
//! }
//!
//! arp_policy_sdk::export_policy!(ReadAlpha);
//!
//! // In the policy crate this is a `#[cfg(test)] mod tests` with `#[test]` functions.
//! # fn main() {
//! use arp_policy_sdk::Entity;
//! use serde_json::json;
//!
//! let agent = Entity::new("Agent", "did:web:orion.agent")
//!     .attrs(json!({ "owner_did": "did:web:ian.samantha.agent" }));
//! let document = Entity::new("Document", "doc-7").parent("Project", "alpha");
//!
//! let allowed = ReadAlpha::evaluate(&Request::new(agent.clone(), "read", document.clone()));
//! assert!(allowed.is_allow());
//! assert_eq!(allowed.policies_fired, ["read_alpha"]);
//! assert_eq!(allowed.obligations[0].params, json!({ "level": "full" }));
//!
//! let denied = ReadAlpha::evaluate(
//!     &Request::new(agent, "delete", document).with_context(json!({ "reason": "cleanup" })),
//! );
//! assert!(!denied.is_allow());
//! # }
//! ```
//!
//! # Rules for policies
//!
//! - Decide from the request only. The host gives the component no files, network,
//!   environment or clock; the current time is [`Request::now_ms`].
//! - Every decision runs in a fresh instance, so nothing is kept between calls, and the
//!   cost of the first call of anything is paid on every decision. Do expensive one-time
//!   preparation in [`Policy::init`], which the host snapshots.
//! - Never panic: a trap is a failed decision. Answer [`Decision::deny`] with a
//!   [`reason`](Decision::reason) instead.

#![deny(missing_docs)]

// Lets the paths that the generated bindings and the export macro use,
// `arp_policy_sdk::...`, resolve inside this crate too.
extern crate self as arp_policy_sdk;

mod types;

pub use serde_json;
pub use types::{Connection, Decision, Effect, Entity, EntityRef, Message, Obligation, Request};

/// A tenant policy: a pure function from a request to a decision.
pub trait Policy {
    /// Decides on one request.
    ///
    /// Must be pure: the same request always gets the same decision, and nothing is kept
    /// between calls (the host runs every decision in a fresh instance).
    fn evaluate(request: &Request) -> Decision;

    /// One-time warm-up, run once by the host when the policy is admitted; the memory it
    /// leaves behind (via a wizer snapshot) is the starting state of every decision.
    ///
    /// Use it to do the work that is slow the first time: parse tables, fill caches, run
    /// one representative evaluation so that lazily initialised statics are ready.
    ///
    /// It runs in the same empty, deterministic context as a decision, and must not open
    /// streams (no printing): no resource survives into the snapshot. Rust std's
    /// `HashMap::new()` / `RandomState::new()` asks WASI (`wasi:random/insecure-seed`) for a
    /// hash seed the first time a thread creates one; that is fine here: the host's seed is
    /// fixed, and the seed is frozen into the snapshot (every decision then starts from the
    /// same seed, and never asks again). Parsing a JSON object creates one too when serde_json's
    /// `preserve_order` feature is on (Cedar turns it on): then a decision whose `init` did
    /// not do so asks for the seed once while the request is converted.
    ///
    /// The default does nothing.
    fn init() {}
}

/// The WIT bindings generated from `wit/policy.wit`. Internal: use [`export_policy!`].
#[doc(hidden)]
#[allow(missing_docs, unsafe_code, clippy::all)]
pub mod bindings {
    wit_bindgen::generate!({
        path: "../wit",
        world: "policy",
        // The export macro is used by the policy crates, so it must be public, know where
        // the bindings live, and reach the wit-bindgen runtime through this crate (policy
        // crates do not depend on wit-bindgen themselves).
        pub_export_macro: true,
        default_bindings_module: "arp_policy_sdk::bindings",
        export_macro_name: "export_wit_policy",
        runtime_path: "arp_policy_sdk::__private::wit_bindgen::rt",
    });
}

/// Implementation details of [`export_policy!`]; not a public API.
#[doc(hidden)]
pub mod __private {
    pub use crate::glue::{evaluate, init};
    pub use wit_bindgen;
}

#[doc(hidden)]
mod glue;

/// Exports a [`Policy`] as the component's `policy` world.
///
/// Use it once, at the top level of the policy crate:
///
/// ```
/// # use arp_policy_sdk::{Decision, Policy, Request};
/// # struct MyPolicy;
/// # impl Policy for MyPolicy {
/// #     fn evaluate(_request: &Request) -> Decision { Decision::deny() }
/// # }
/// arp_policy_sdk::export_policy!(MyPolicy);
/// # fn main() {}
/// ```
///
/// It implements the generated WIT traits for a hidden type that forwards to
/// `MyPolicy`'s [`Policy`] methods, converting the WIT records to the SDK's types and back.
#[macro_export]
macro_rules! export_policy {
    ($policy:ty) => {
        // The generated exports are `unsafe extern "C"` functions; policy crates may deny
        // unsafe code for their own code, which this allows only for the glue.
        #[allow(unsafe_code)]
        const _: () = {
            // Only the wasm build exports it; natively the impls below are still compiled,
            // so a policy crate's `cargo test` checks the glue too.
            #[allow(dead_code)]
            struct ArpPolicyExport;

            impl $crate::bindings::Guest for ArpPolicyExport {
                fn init() {
                    $crate::__private::init::<$policy>()
                }
            }

            impl $crate::bindings::exports::arp::policy::decide::Guest for ArpPolicyExport {
                fn evaluate(
                    request: $crate::bindings::exports::arp::policy::decide::Request,
                ) -> $crate::bindings::exports::arp::policy::decide::Decision {
                    $crate::__private::evaluate::<$policy>(request)
                }
            }

            // The export names (`arp:policy/decide@0.1.0#evaluate`) are not valid symbol
            // names for a native shared library, so a native `cdylib` could not link them.
            #[cfg(target_arch = "wasm32")]
    $crate::bindings::export_wit_policy!(ArpPolicyExport with_types_in $crate::bindings);
        };
    };
}
