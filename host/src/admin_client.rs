//! The operator's and tenants' command line over HTTP: `arp-host admin ...` and
//! `arp-host policy push|activate|list`, each one request to the admin API (`/admin/v1`,
//! see [`crate::http::admin`]). The answer's JSON is printed; a refusal prints its reason
//! code and exits 1.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use base64::Engine as _;
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::cli::{CliError, NewAgentArgs};

/// Where the admin API is and who is calling.
#[derive(Clone, Debug, Args)]
pub struct Remote {
    /// The server, e.g. `http://127.0.0.1:8787`.
    #[arg(long, env = "ARP_ADMIN_URL")]
    pub url: String,
    /// The operator token or a tenant API key (`arpk_...`).
    #[arg(long, env = "ARP_ADMIN_KEY", hide_env_values = true)]
    pub key: String,
}

/// `arp-host admin ...`: the admin API from the command line.
#[derive(Debug, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub remote: Remote,
    /// What to do.
    #[command(subcommand)]
    pub command: AdminCommand,
}

/// Admin verbs.
#[derive(Debug, Subcommand)]
pub enum AdminCommand {
    /// Tenants (operator).
    #[command(subcommand)]
    Tenant(TenantVerb),
    /// Tenant API keys (operator).
    #[command(subcommand)]
    Key(KeyVerb),
    /// A tenant's agents.
    #[command(subcommand)]
    Agent(AgentVerb),
    /// A tenant's connections.
    #[command(subcommand)]
    Connection(ConnectionVerb),
    /// Verify every audit chain of a tenant.
    AuditVerify {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Inbound messages counted in a month.
    Usage {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// `YYYY-MM` (default: this month).
        #[arg(long)]
        period: Option<String>,
    },
}

/// `admin tenant ...`
#[derive(Debug, Subcommand)]
pub enum TenantVerb {
    /// Create a tenant.
    Create {
        /// Its id.
        id: String,
        /// `free`, `pro`, `team` or `internal`.
        #[arg(long, default_value = "free")]
        plan: String,
    },
    /// List tenants.
    List,
    /// Show a tenant.
    Show {
        /// Its id.
        id: String,
    },
    /// Change a tenant's plan.
    Plan {
        /// Its id.
        id: String,
        /// The new plan.
        plan: String,
    },
    /// Set a tenant's limits (an unset flag restores the host default).
    Limits {
        /// Its id.
        id: String,
        /// Fuel per decision.
        #[arg(long)]
        fuel: Option<u64>,
        /// Deadline per decision, in milliseconds.
        #[arg(long)]
        deadline_ms: Option<u64>,
        /// Linear memory per decision, in bytes.
        #[arg(long)]
        memory_bytes: Option<u64>,
        /// Decisions of the tenant at once.
        #[arg(long)]
        concurrency: Option<u32>,
    },
}

/// `admin key ...`
#[derive(Debug, Subcommand)]
pub enum KeyVerb {
    /// Create an API key (printed once).
    Create {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// A label.
        #[arg(long)]
        label: Option<String>,
    },
    /// List a tenant's keys.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Revoke a key.
    Revoke {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The key id (`key_...`).
        id: String,
    },
}

/// `admin agent ...`
#[derive(Debug, Subcommand)]
pub enum AgentVerb {
    /// Host an agent (a generated secret key is printed once).
    Create(NewAgentArgs),
    /// List a tenant's agents.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
}

/// `admin connection ...`
#[derive(Debug, Subcommand)]
pub enum ConnectionVerb {
    /// Store a connection from its token file (JSON).
    Create {
        /// The tenant.
        #[arg(long)]
        tenant: String,
        /// The token file.
        #[arg(long)]
        token: PathBuf,
        /// The hosted side, when both are hosted.
        #[arg(long)]
        agent: Option<String>,
    },
    /// List a tenant's connections.
    List {
        /// The tenant.
        #[arg(long)]
        tenant: String,
    },
    /// Suspend a connection.
    Suspend(ConnectionAction),
    /// Resume a suspended connection.
    Resume(ConnectionAction),
    /// Revoke a connection.
    Revoke(ConnectionAction),
}

/// Which connection, and why.
#[derive(Debug, Args)]
pub struct ConnectionAction {
    /// The tenant.
    #[arg(long)]
    pub tenant: String,
    /// The connection id.
    pub id: String,
    /// Recorded in the audit entry.
    #[arg(long)]
    pub reason: Option<String>,
}

/// `policy push|activate|list` over HTTP.
#[derive(Debug, Subcommand)]
pub enum RemotePolicyVerb {
    /// Upload a component; with --cases the server runs them first and refuses the upload
    /// if one fails. Prints the version's digest. Does not activate it.
    Push {
        /// The policy component (`.wasm`).
        file: PathBuf,
        /// A case file (JSON or YAML) every case of which must pass.
        #[arg(long)]
        cases: Option<PathBuf>,
    },
    /// Activate a stored version (rollback: activate an earlier one).
    Activate {
        /// The version's digest (`sha256:...`).
        digest: String,
    },
    /// List the stored versions and the active one.
    List,
}

/// One request.
struct Call {
    method: reqwest::Method,
    path: String,
    body: Option<(Vec<u8>, &'static str)>,
}

impl Call {
    fn get(path: String) -> Self {
        Self {
            method: reqwest::Method::GET,
            path,
            body: None,
        }
    }

    fn json(method: reqwest::Method, path: String, body: Value) -> Self {
        Self {
            method,
            path,
            body: Some((body.to_string().into_bytes(), "application/json")),
        }
    }
}

fn tenant_path(tenant: &str, rest: &str) -> String {
    format!("/admin/v1/tenants/{}{rest}", segment(tenant))
}

/// A path segment, percent-encoded where needed (DIDs keep their `:`).
fn segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~:".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, CliError> {
    std::fs::read(path).map_err(|source| CliError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn read_json(path: &Path) -> Result<Value, CliError> {
    let text = String::from_utf8(read(path)?)
        .map_err(|_| CliError::Invalid(format!("{} is not UTF-8", path.display())))?;
    let parsed = if text.trim_start().starts_with(['{', '[']) {
        serde_json::from_str(&text).map_err(|error| error.to_string())
    } else {
        serde_yaml::from_str(&text).map_err(|error| error.to_string())
    };
    parsed.map_err(|error| CliError::Invalid(format!("{}: {error}", path.display())))
}

fn admin_call(command: AdminCommand) -> Result<Call, CliError> {
    use reqwest::Method;
    Ok(match command {
        AdminCommand::Tenant(verb) => match verb {
            TenantVerb::Create { id, plan } => Call::json(
                Method::POST,
                "/admin/v1/tenants".into(),
                json!({"id": id, "plan": plan}),
            ),
            TenantVerb::List => Call::get("/admin/v1/tenants".into()),
            TenantVerb::Show { id } => Call::get(tenant_path(&id, "")),
            TenantVerb::Plan { id, plan } => Call::json(
                Method::PUT,
                tenant_path(&id, "/plan"),
                json!({"plan": plan}),
            ),
            TenantVerb::Limits {
                id,
                fuel,
                deadline_ms,
                memory_bytes,
                concurrency,
            } => Call::json(
                Method::PUT,
                tenant_path(&id, "/limits"),
                json!({"fuel": fuel, "deadlineMs": deadline_ms,
                       "memoryBytes": memory_bytes, "concurrency": concurrency}),
            ),
        },
        AdminCommand::Key(verb) => match verb {
            KeyVerb::Create { tenant, label } => Call::json(
                Method::POST,
                tenant_path(&tenant, "/keys"),
                json!({"label": label}),
            ),
            KeyVerb::List { tenant } => Call::get(tenant_path(&tenant, "/keys")),
            KeyVerb::Revoke { tenant, id } => Call {
                method: Method::DELETE,
                path: tenant_path(&tenant, &format!("/keys/{}", segment(&id))),
                body: None,
            },
        },
        AdminCommand::Agent(verb) => match verb {
            AgentVerb::Create(NewAgentArgs {
                tenant,
                did,
                owner,
                name,
                public_key_multibase,
            }) => Call::json(
                Method::POST,
                tenant_path(&tenant, "/agents"),
                json!({"did": did, "owner": owner, "name": name,
                       "publicKeyMultibase": public_key_multibase}),
            ),
            AgentVerb::List { tenant } => Call::get(tenant_path(&tenant, "/agents")),
        },
        AdminCommand::Connection(verb) => match verb {
            ConnectionVerb::Create {
                tenant,
                token,
                agent,
            } => Call::json(
                Method::POST,
                tenant_path(&tenant, "/connections"),
                json!({"token": read_json(&token)?, "agent": agent}),
            ),
            ConnectionVerb::List { tenant } => Call::get(tenant_path(&tenant, "/connections")),
            ConnectionVerb::Suspend(action) => connection_action(action, "suspend"),
            ConnectionVerb::Resume(action) => connection_action(action, "resume"),
            ConnectionVerb::Revoke(action) => connection_action(action, "revoke"),
        },
        AdminCommand::AuditVerify { tenant } => Call::get(tenant_path(&tenant, "/audit/verify")),
        AdminCommand::Usage { tenant, period } => Call::get(tenant_path(
            &tenant,
            &period.map_or_else(
                || "/usage".to_owned(),
                |p| format!("/usage?period={}", segment(&p)),
            ),
        )),
    })
}

fn connection_action(action: ConnectionAction, verb: &str) -> Call {
    Call::json(
        reqwest::Method::POST,
        tenant_path(
            &action.tenant,
            &format!("/connections/{}/{verb}", segment(&action.id)),
        ),
        json!({"reason": action.reason}),
    )
}

fn policy_call(tenant: &str, verb: RemotePolicyVerb) -> Result<Call, CliError> {
    use reqwest::Method;
    Ok(match verb {
        RemotePolicyVerb::Push { file, cases } => {
            let bytes = read(&file)?;
            match cases {
                None => Call {
                    method: Method::PUT,
                    path: tenant_path(tenant, "/policies"),
                    body: Some((bytes, "application/wasm")),
                },
                Some(cases) => Call::json(
                    Method::PUT,
                    tenant_path(tenant, "/policies"),
                    json!({
                        "component": base64::engine::general_purpose::STANDARD.encode(&bytes),
                        "cases": read_json(&cases)?,
                    }),
                ),
            }
        }
        RemotePolicyVerb::Activate { digest } => Call::json(
            Method::PUT,
            tenant_path(tenant, "/policies/active"),
            json!({"digest": digest}),
        ),
        RemotePolicyVerb::List => Call::get(tenant_path(tenant, "/policies")),
    })
}

/// Runs `arp-host admin ...`.
pub fn run_admin(args: AdminArgs) -> Result<ExitCode, CliError> {
    let call = admin_call(args.command)?;
    send(&args.remote, call)
}

/// Runs `arp-host policy push|activate|list --url --key --tenant`.
pub fn run_remote_policy(
    remote: &Remote,
    tenant: &str,
    verb: RemotePolicyVerb,
) -> Result<ExitCode, CliError> {
    let call = policy_call(tenant, verb)?;
    send(remote, call)
}

/// Sends one request and prints the answer: exit 0 on 2xx, 1 on a refusal.
fn send(remote: &Remote, call: Call) -> Result<ExitCode, CliError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let url = format!("{}{}", remote.url.trim_end_matches('/'), call.path);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| CliError::Io {
            what: "cannot start the runtime".into(),
            source,
        })?;
    let (status, text) = runtime.block_on(async {
        let client = reqwest::Client::new();
        let mut request = client.request(call.method, &url).bearer_auth(&remote.key);
        if let Some((body, content_type)) = call.body {
            request = request
                .header(reqwest::header::CONTENT_TYPE, content_type)
                .body(body);
        }
        let response = request
            .send()
            .await
            .map_err(|error| CliError::Invalid(format!("{url}: {error}")))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|error| CliError::Invalid(format!("{url}: {error}")))?;
        Ok::<_, CliError>((status, text))
    })?;
    let pretty = serde_json::from_str::<Value>(&text)
        .ok()
        .and_then(|value| serde_json::to_string_pretty(&value).ok())
        .unwrap_or(text);
    if status.is_success() {
        println!("{pretty}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("refused ({status}):");
        eprintln!("{pretty}");
        Ok(ExitCode::FAILURE)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn paths_keep_dids_readable_and_escape_the_rest() {
        assert_eq!(segment("did:web:a.agent"), "did:web:a.agent");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
        assert_eq!(
            tenant_path("acme", "/agents"),
            "/admin/v1/tenants/acme/agents"
        );
    }
}
