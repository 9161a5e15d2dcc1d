//! The grants phase (`--grants`): what revealing under an approved-workflow
//! grant costs. On a vault started afresh on the run's store (with
//! `[grants] max_reveals` raised to [`GRANT_REVEALS`]), `orders` tokenizes
//! `--grant-addresses` fake addresses; `fulfilment` requests one grant for
//! the whole phase, which `approver1` and `approver2` approve. Then, with
//! the run's duration, concurrency and connections, detokenize-1 and
//! detokenize-100 (those of them `--scenarios` names, else both) run as
//! `support` for `callback` (addresses masked, no grant, no quota: the
//! baseline) and as `fulfilment` for `shipping` under the grant (addresses
//! in full; every call charges its values to the grant through the store's
//! write-ahead log before they leave). At the end the grant's `used`, read
//! back with GetGrant, must equal the values revealed under it.

use super::lifecycle::tokenize_all;
use super::{
    clients, values_revealed, write_config, FreshVault, Load, Measurement, Scenario, ServerChild,
    Tuning, Values,
};
use fieldvault::client::{self, ClientTls};
use fieldvault::grpc::pb;
use fieldvault::grpc::pb::grants_client::GrantsClient;
use fieldvault::grpc::pb::vault_client::VaultClient;
use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;

/// The grant's `max_reveals`, and the server's `[grants] max_reveals` in
/// this phase: the largest ceiling a config takes, so that no run of a
/// sensible length exhausts it (10 s of detokenize-100 at 100,000 values/s
/// is a tenth of it). A run that did would fail its calls, not pass.
pub const GRANT_REVEALS: u32 = fieldvault::domain::grant::MAX_MAX_REVEALS;
/// How long the grant is valid for: far longer than any run.
const GRANT_VALID_FOR: Duration = Duration::from_secs(24 * 3600);
/// The purpose of the baseline: `support` sees addresses masked.
const BASELINE_PURPOSE: &str = "callback";
/// The purpose of the reveals under the grant.
const GRANT_PURPOSE: &str = "shipping";
/// The rule that requires the grant (as in the dev policy).
const GRANT_RULE: &str = "bench fulfilment reveals addresses in full for shipping under a grant";
/// Values revealed under the grant by the checks before the measurements
/// (one full address).
const CHECKED_REVEALS: u64 = 1;

/// The sizes of the grants phase.
#[derive(Clone, Copy, Debug)]
pub struct GrantsOptions {
    /// Addresses tokenized, then revealed at random.
    pub addresses: u64,
}

/// One measurement of the phase.
#[derive(Clone, Debug)]
pub struct GrantRun {
    pub scenario: Scenario,
    /// As `fulfilment` under the grant (else `support`, no grant).
    pub under_grant: bool,
    pub measurement: Measurement,
}

/// What the grants phase measured.
#[derive(Clone, Debug)]
pub struct GrantsReport {
    pub sizes: GrantsOptions,
    pub grant_id: String,
    /// Per scenario, the baseline then the run under the grant.
    pub runs: Vec<GrantRun>,
    /// Values revealed under the grant by calls that succeeded: the checks
    /// before the measurements, the warm-ups and the measurements.
    pub revealed: u64,
    /// The grant's `used`, read back with GetGrant at the end.
    pub used: u64,
    pub remaining: u64,
    /// The grant's state at the end (`ACTIVE`, …).
    pub state: String,
}

impl GrantsReport {
    pub fn failed_calls(&self) -> u64 {
        self.runs.iter().map(|r| r.measurement.failed).sum()
    }

    /// Whether the vault counted exactly the values revealed under the
    /// grant.
    pub fn counted_exactly(&self) -> bool {
        self.used == self.revealed
    }

    pub fn to_markdown(&self, o: &super::BenchOptions) -> String {
        let mut out = format!(
            "approved-workflow grants (--grants): on a vault started afresh on the run's store \
             (`[grants] max_reveals = {GRANT_REVEALS}`), {} addresses tokenized by orders; \
             support reveals them masked for `{BASELINE_PURPOSE}` (no grant, no quota: the \
             baseline), fulfilment in full for `{GRANT_PURPOSE}` under grant {} (max_reveals \
             {GRANT_REVEALS}, approved by approver1 and approver2), each call charging its \
             values to the grant durably before they leave; {} in flight over {} connections\n\
             | scenario | caller | calls/s | values/s | p50 ms | p99 ms | max ms | failed |\n\
             |---|---|---:|---:|---:|---:|---:|---:|\n",
            self.sizes.addresses, self.grant_id, o.concurrency, o.connections
        );
        let runs: Vec<(Scenario, &str, &Measurement)> = self
            .runs
            .iter()
            .map(|r| (r.scenario, caller_label(r.under_grant), &r.measurement))
            .collect();
        super::paired_runs(&mut out, &runs, |x| {
            format!("under the grant {x:.2}x the calls/s of the baseline")
        });
        out.push_str(&format!(
            "grant count: GetGrant says used = {} (remaining {}, state {}); values revealed \
             under the grant = {} (checks and warm-ups included): {}\n\n",
            self.used,
            self.remaining,
            self.state,
            self.revealed,
            if self.counted_exactly() {
                "exact"
            } else {
                "MISMATCH: the run fails"
            }
        ));
        out
    }
}

fn caller_label(under_grant: bool) -> &'static str {
    if under_grant {
        "fulfilment, full, under the grant"
    } else {
        "support, masked, no grant"
    }
}

/// The phase's policy, the dev policy's rules for these callers: `orders`
/// tokenizes addresses; `support` sees them masked for callbacks (no
/// quota); `fulfilment` sees them in full for shipping only under a grant
/// two of `approver1` and `approver2` approved.
pub fn grants_policy() -> String {
    let id = fieldvault::dev::spiffe_id;
    format!(
        r#"version = 1
[[rules]]
name = "bench writer of addresses"
callers = ["{orders}"]
action = "tokenize"
kinds = ["address"]
[[rules]]
name = "bench support sees addresses masked for callbacks"
callers = ["{support}"]
action = "detokenize"
kinds = ["address"]
purposes = ["{BASELINE_PURPOSE}"]
reveal = "masked"
[[rules]]
name = "{GRANT_RULE}"
callers = ["{fulfilment}"]
action = "detokenize"
kinds = ["address"]
purposes = ["{GRANT_PURPOSE}"]
reveal = "full"
requires_grant = true
approvals = 2
approvers = ["{approver1}", "{approver2}"]
"#,
        orders = id("orders"),
        support = id("support"),
        fulfilment = id("fulfilment"),
        approver1 = id("approver1"),
        approver2 = id("approver2"),
    )
}

/// The `n`th fake address.
fn address(n: u64) -> String {
    format!("{} Example Street, Springfield", n + 1)
}

fn address_field(n: u64) -> pb::Field {
    pb::Field {
        kind: pb::FieldKind::Address as i32,
        value: address(n),
        ..Default::default()
    }
}

/// A Grants client as the dev identity `name`.
async fn grants_client(
    dir: &Path,
    addr: &str,
    name: &str,
) -> Result<GrantsClient<Channel>, String> {
    let tls = ClientTls::dev(dir, name).map_err(|e| e.to_string())?;
    let channel = client::channel(addr, &tls)
        .await
        .map_err(|e| e.to_string())?;
    Ok(GrantsClient::new(channel))
}

/// A reader load on `vault` as the dev identity `name`, revealing `tokens`
/// for `purpose` under `grant_id` (empty: none).
async fn reader_load(
    fresh: &FreshVault<'_>,
    addr: &str,
    name: &str,
    tokens: &Arc<Vec<String>>,
    purpose: &str,
    grant_id: &str,
) -> Result<Arc<Load>, String> {
    let tls = ClientTls::dev(fresh.dir, name).map_err(|e| e.to_string())?;
    Ok(Arc::new(Load {
        writers: Vec::new(),
        readers: clients(addr, &tls, fresh.options.connections.max(1)).await?,
        values: Values {
            next: AtomicU64::new(0),
        },
        tokens: tokens.clone(),
        purpose: purpose.to_owned(),
        grant_id: grant_id.to_owned(),
    }))
}

/// Detokenizes the first of `tokens` on `load`'s first connection: the
/// one result, or the call's refusal.
async fn detokenize_one(
    load: &Load,
    tokens: &[String],
) -> Result<Result<pb::DetokenizeResult, tonic::Status>, String> {
    let mut client: VaultClient<Channel> =
        load.readers.first().ok_or("no reader connection")?.clone();
    let first = tokens.first().ok_or("no token")?.clone();
    let answer = client
        .detokenize(pb::DetokenizeRequest {
            tokens: vec![first],
            purpose: load.purpose.clone(),
            justification: String::new(),
            grant_id: load.grant_id.clone(),
        })
        .await;
    Ok(match answer {
        Ok(resp) => Ok(resp
            .into_inner()
            .results
            .into_iter()
            .next()
            .ok_or("detokenize: no result")?),
        Err(status) => Err(status),
    })
}

/// The reveal level of a result that revealed a value, and the value.
fn revealed(result: &pb::DetokenizeResult) -> Option<(pb::Reveal, &str)> {
    match &result.outcome {
        Some(pb::detokenize_result::Outcome::Revealed(v)) => Some((v.reveal(), v.value.as_str())),
        _ => None,
    }
}

/// The calls of the phase that show what is measured before it is: the
/// baseline reveals masked; the workflow is refused without its grant and
/// while it is pending; under the grant it reveals the full address.
struct Checks<'a> {
    tokens: &'a [String],
}

impl Checks<'_> {
    async fn baseline_is_masked(&self, support: &Load) -> Result<(), String> {
        match detokenize_one(support, self.tokens).await? {
            Ok(r) if revealed(&r).map(|(level, _)| level) == Some(pb::Reveal::Masked) => Ok(()),
            Ok(_) => Err("support's baseline reveal is not a masked address".into()),
            Err(s) => Err(format!(
                "support's baseline reveal was refused: {:?}: {}",
                s.code(),
                s.message()
            )),
        }
    }

    async fn refused(&self, fulfilment: &Load, when: &str) -> Result<(), String> {
        match detokenize_one(fulfilment, self.tokens).await? {
            Err(_) => Ok(()),
            Ok(r) if revealed(&r).is_none() => Ok(()),
            Ok(_) => Err(format!(
                "fulfilment revealed an address {when}: the grant rule is not in force"
            )),
        }
    }

    /// Reveals one address in full under the grant (it consumes one unit).
    async fn full_under_grant(&self, fulfilment: &Load) -> Result<(), String> {
        match detokenize_one(fulfilment, self.tokens).await? {
            Ok(r) => match revealed(&r) {
                Some((pb::Reveal::Full, value)) if value == address(0) => Ok(()),
                Some((pb::Reveal::Full, _)) => {
                    Err("under the grant, the address revealed is not the one tokenized".into())
                }
                _ => Err("under the grant, fulfilment got no full address".into()),
            },
            Err(s) => Err(format!(
                "under the grant, fulfilment was refused: {:?}: {}",
                s.code(),
                s.message()
            )),
        }
    }
}

/// Requests the grant as `fulfilment` (for itself): its id.
async fn request_grant(fulfilment: &mut GrantsClient<Channel>) -> Result<String, String> {
    let grant = fulfilment
        .request_grant(pb::RequestGrantRequest {
            caller: String::new(),
            kinds: vec![pb::FieldKind::Address as i32],
            purpose: GRANT_PURPOSE.into(),
            max_reveals: GRANT_REVEALS,
            valid_for: Some(client::ttl(GRANT_VALID_FOR)),
            reason: "fieldvault-bench grants phase".into(),
            tokens: Vec::new(),
        })
        .await
        .map_err(|e| format!("RequestGrant: {}", e.message()))?
        .into_inner()
        .grant
        .ok_or("RequestGrant: no grant")?;
    if grant.state() != pb::GrantState::Pending {
        return Err(format!(
            "grant {} is {:?} when requested, not PENDING",
            grant.grant_id,
            grant.state()
        ));
    }
    Ok(grant.grant_id)
}

/// `approver` approves grant `id`: its state afterwards.
async fn approve(
    fresh: &FreshVault<'_>,
    addr: &str,
    approver: &str,
    id: &str,
) -> Result<pb::GrantState, String> {
    let mut client = grants_client(fresh.dir, addr, approver).await?;
    Ok(client
        .approve_grant(pb::ApproveGrantRequest {
            grant_id: id.to_owned(),
        })
        .await
        .map_err(|e| format!("ApproveGrant as {approver}: {}", e.message()))?
        .into_inner()
        .grant
        .ok_or("ApproveGrant: no grant")?
        .state())
}

/// Runs the grants phase.
pub async fn measure(
    fresh: &FreshVault<'_>,
    audit_log: &Path,
    sizes: &GrantsOptions,
) -> Result<GrantsReport, String> {
    let o = fresh.options;
    let tuning = Tuning {
        grants_max_reveals: Some(GRANT_REVEALS),
        ..Tuning::default()
    };
    let config = write_config(
        fresh.dir,
        "bench-grants.toml",
        o.cache_capacity_mib,
        audit_log,
        &grants_policy(),
        &tuning,
    )?;
    let config = config.to_str().ok_or("non-UTF-8 path")?;
    let (vault, _) = ServerChild::spawn(fresh.bin, &["serve", "--config", config])?;
    let result = run_on(fresh, &vault.addr, sizes).await;
    vault.stop();
    result
}

async fn run_on(
    fresh: &FreshVault<'_>,
    addr: &str,
    sizes: &GrantsOptions,
) -> Result<GrantsReport, String> {
    let o = fresh.options;
    let k = o.connections.max(1);
    let writer_tls = ClientTls::dev(fresh.dir, "orders").map_err(|e| e.to_string())?;
    let writers = clients(addr, &writer_tls, k).await?;
    eprintln!("grants: tokenizing {} addresses…", sizes.addresses);
    let tokens =
        Arc::new(tokenize_all(&writers, (0..sizes.addresses.max(1)).map(address_field)).await?);
    drop(writers);
    let checks = Checks { tokens: &tokens };

    let support = reader_load(fresh, addr, "support", &tokens, BASELINE_PURPOSE, "").await?;
    checks.baseline_is_masked(&support).await?;
    let without = reader_load(fresh, addr, "fulfilment", &tokens, GRANT_PURPOSE, "").await?;
    checks.refused(&without, "without a grant").await?;
    drop(without);

    eprintln!(
        "grants: fulfilment requests a grant of {GRANT_REVEALS} reveals; approver1 and \
         approver2 approve it…"
    );
    let mut own = grants_client(fresh.dir, addr, "fulfilment").await?;
    let grant_id = request_grant(&mut own).await?;
    let fulfilment =
        reader_load(fresh, addr, "fulfilment", &tokens, GRANT_PURPOSE, &grant_id).await?;
    checks.refused(&fulfilment, "under a pending grant").await?;
    let state = approve(fresh, addr, "approver1", &grant_id).await?;
    if state != pb::GrantState::Pending {
        return Err(format!(
            "grant {grant_id} is {state:?} after one approval of the two its rule asks"
        ));
    }
    checks
        .refused(&fulfilment, "under a grant one approver approved")
        .await?;
    let state = approve(fresh, addr, "approver2", &grant_id).await?;
    if state != pb::GrantState::Active {
        return Err(format!(
            "grant {grant_id} is {state:?} after two approvals, not ACTIVE"
        ));
    }
    checks.full_under_grant(&fulfilment).await?;
    let mut revealed = CHECKED_REVEALS;

    let mut runs = Vec::new();
    for scenario in super::detokenize_scenarios(&o.scenarios) {
        for (under_grant, load) in [(false, &support), (true, &fulfilment)] {
            eprintln!(
                "grants: running {} as {}…",
                scenario.name(),
                caller_label(under_grant)
            );
            let (warm_up, measurement) = fresh.measure(load, scenario).await;
            if under_grant {
                revealed += values_revealed(&warm_up) + values_revealed(&measurement);
            }
            runs.push(GrantRun {
                scenario,
                under_grant,
                measurement,
            });
        }
    }

    let grant = own
        .get_grant(pb::GetGrantRequest {
            grant_id: grant_id.clone(),
        })
        .await
        .map_err(|e| format!("GetGrant: {}", e.message()))?
        .into_inner()
        .grant
        .ok_or("GetGrant: no grant")?;
    Ok(GrantsReport {
        sizes: *sizes,
        grant_id,
        runs,
        revealed,
        used: u64::from(grant.used),
        remaining: u64::from(grant.remaining),
        state: grant
            .state()
            .as_str_name()
            .trim_start_matches("GRANT_STATE_")
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use fieldvault::domain::policy::{Policy, Rule};

    fn measurement(calls: u64, failed: u64, values_per_call: u64) -> Measurement {
        Measurement {
            calls,
            failed,
            seconds: 1.0,
            values_per_call,
            p50_us: 2000,
            p95_us: 3000,
            p99_us: 4000,
            max_us: 9000,
            written: 0,
        }
    }

    fn report(baseline: Measurement, granted: Measurement, used: u64) -> GrantsReport {
        let revealed = CHECKED_REVEALS + values_revealed(&granted);
        GrantsReport {
            sizes: GrantsOptions { addresses: 300 },
            grant_id: "6f1c2d3e-4b5a-4c6d-8e7f-0123456789ab".into(),
            runs: vec![
                GrantRun {
                    scenario: Scenario::Detokenize,
                    under_grant: false,
                    measurement: baseline,
                },
                GrantRun {
                    scenario: Scenario::Detokenize,
                    under_grant: true,
                    measurement: granted,
                },
            ],
            revealed,
            used,
            remaining: u64::from(GRANT_REVEALS) - used,
            state: "ACTIVE".into(),
        }
    }

    fn options() -> super::super::BenchOptions {
        super::super::BenchOptions {
            grants: Some(GrantsOptions { addresses: 300 }),
            ..super::super::BenchOptions::for_tests()
        }
    }

    #[test]
    fn the_grants_table_has_the_baseline_and_the_grant_rows_and_their_ratio() {
        let r = report(measurement(1000, 0, 1), measurement(600, 0, 1), 601);
        assert!(r.counted_exactly());
        assert_eq!(r.failed_calls(), 0);
        let text = r.to_markdown(&options());
        assert!(
            text.contains(
                "| detokenize-1 | support, masked, no grant | 1000 | 1000 | 2.00 | 4.00 | 9.00 | 0 |"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "| detokenize-1 | fulfilment, full, under the grant | 600 | 600 | 2.00 | 4.00 | 9.00 | 0 |"
            ),
            "{text}"
        );
        assert!(
            text.contains("detokenize-1: under the grant 0.60x the calls/s of the baseline"),
            "{text}"
        );
        assert!(
            text.contains("GetGrant says used = 601 (remaining 9999399, state ACTIVE); values revealed under the grant = 601 (checks and warm-ups included): exact"),
            "{text}"
        );
    }

    #[test]
    fn a_grant_count_other_than_the_values_revealed_is_a_mismatch() {
        let r = report(measurement(1000, 0, 1), measurement(600, 0, 1), 600);
        assert!(!r.counted_exactly());
        let text = r.to_markdown(&options());
        assert!(text.contains("MISMATCH: the run fails"), "{text}");
        assert!(!text.contains(": exact"), "{text}");
    }

    #[test]
    fn failed_calls_under_the_grant_leave_no_ratio() {
        let r = report(measurement(1000, 0, 1), measurement(600, 600, 1), 1);
        assert_eq!(r.failed_calls(), 600);
        let text = r.to_markdown(&options());
        assert!(
            text.contains("detokenize-1: no ratio: 600 calls failed"),
            "{text}"
        );
        assert!(!text.contains("calls/s of the baseline"), "{text}");
    }

    /// The rule of `policy` that names `caller` for detokenize of addresses
    /// for `purpose`.
    fn rule<'a>(policy: &'a Policy, caller: &str, purpose: &str) -> &'a Rule {
        let caller = fieldvault::dev::spiffe_id(caller);
        policy
            .rules()
            .iter()
            .find(|r| {
                r.callers.contains(&caller)
                    && r.kinds.contains(&fieldvault::domain::FieldKind::Address)
                    && r.purposes.iter().any(|p| p.as_str() == purpose)
            })
            .unwrap_or_else(|| panic!("no rule for {caller} and {purpose}"))
    }

    #[test]
    fn the_grants_policy_has_the_dev_policys_rules_for_support_and_fulfilment_addresses() {
        let bench = Policy::from_toml(&grants_policy()).unwrap();
        let dev = Policy::from_toml(fieldvault::dev::DEV_POLICY).unwrap();
        for (caller, purpose) in [("support", BASELINE_PURPOSE), ("fulfilment", GRANT_PURPOSE)] {
            let (b, d) = (rule(&bench, caller, purpose), rule(&dev, caller, purpose));
            assert_eq!(b.reveal, d.reveal, "{caller}");
            assert_eq!(b.grant, d.grant, "{caller}");
            assert_eq!(b.quotas, d.quotas, "{caller}");
            assert_eq!(b.justification, d.justification, "{caller}");
        }
        let grant = rule(&bench, "fulfilment", GRANT_PURPOSE)
            .grant
            .clone()
            .unwrap();
        assert_eq!(grant.approvals, 2);
        assert!(!rule(&bench, "support", BASELINE_PURPOSE).requires_grant());
    }
}
