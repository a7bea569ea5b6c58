//! `demo --fault`: a GPU going bad in the middle of a run. A fault names a pod, what happens to
//! its GPU and when, counted from the start of each policy's run:
//!
//! ```text
//! pod-2:throttle=0.5@30s   pod 2 runs at half speed from 30 s on (a thermal throttle)
//! pod-3:lost@30s           pod 3's GPU falls off the bus at 30 s
//! pod-3:recover@50s        pod 3 is back at full speed (after a throttle or a loss)
//! ```
//!
//! Pods are numbered from 0 (`pod-N` is the agent's `emulator-N`). At the fault's time the demo
//! posts the matching change to that pod's emulator (`POST /lab/degrade`), whose fake GPU state
//! (`GET /lab/gpus`) the pod's agent reads and reports to the picker. [`super::shares`] measures
//! how routing followed.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

/// What happens to a pod's GPU.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultAction {
    /// Runs at this fraction of full speed (0 < speed ≤ 1).
    Throttle(f64),
    /// Fails like a GPU that fell off the bus.
    Lost,
    /// Back at full speed and serving.
    Recover,
}

impl FaultAction {
    /// The `POST /lab/degrade` body that makes it happen.
    pub fn degrade_body(self) -> Value {
        match self {
            FaultAction::Throttle(speed) => json!({"speed": speed}),
            FaultAction::Lost => json!({"lost": true}),
            FaultAction::Recover => json!({"speed": 1.0, "lost": false}),
        }
    }
}

/// One `--fault`: a pod, what happens to it, and when.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fault {
    /// The pod's index, from 0.
    pub pod: u32,
    /// What happens.
    pub action: FaultAction,
    /// When, from the start of the run.
    #[serde(rename = "at_s", serialize_with = "seconds")]
    pub at: Duration,
}

fn seconds<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let action = match self.action {
            FaultAction::Throttle(speed) => format!("throttle={speed}"),
            FaultAction::Lost => "lost".into(),
            FaultAction::Recover => "recover".into(),
        };
        let at = humantime::format_duration(self.at);
        write!(f, "pod-{}:{action}@{at}", self.pod)
    }
}

const SYNTAX: &str = "pod-N:throttle=SPEED@TIME, pod-N:lost@TIME or pod-N:recover@TIME, e.g. \
                      pod-2:throttle=0.5@30s";

impl FromStr for Fault {
    type Err = String;

    /// Parses `pod-N:ACTION@TIME`; the error quotes the part that is wrong.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (pod, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?}: no ':' after the pod; expected {SYNTAX}"))?;
        let (action, at) = rest
            .split_once('@')
            .ok_or_else(|| format!("{s:?}: no '@TIME' after {rest:?}; expected {SYNTAX}"))?;
        Ok(Fault {
            pod: parse_pod(pod)?,
            action: parse_action(action)?,
            at: humantime::parse_duration(at)
                .map_err(|e| format!("time {at:?} is not a duration like 30s or 1m30s: {e}"))?,
        })
    }
}

fn parse_pod(pod: &str) -> Result<u32, String> {
    pod.strip_prefix("pod-")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| format!("pod {pod:?}: expected pod-N with N a pod's index from 0"))
}

fn parse_action(action: &str) -> Result<FaultAction, String> {
    match action.split_once('=') {
        None if action == "lost" => Ok(FaultAction::Lost),
        None if action == "recover" => Ok(FaultAction::Recover),
        Some(("throttle", speed)) => match speed.parse::<f64>() {
            Ok(v) if v > 0.0 && v <= 1.0 => Ok(FaultAction::Throttle(v)),
            _ => Err(format!(
                "throttle={speed}: the speed is a fraction of full speed, above 0 and at most 1"
            )),
        },
        _ => Err(format!(
            "{action:?} is not a fault: expected throttle=SPEED, lost or recover"
        )),
    }
}

/// Checks every fault fits the run: a pod that exists, a time within the run. The error names
/// the fault.
pub fn check(faults: &[Fault], pods: u32, duration: Duration) -> Result<(), String> {
    for f in faults {
        if f.pod >= pods {
            return Err(format!(
                "--fault {f}: there is no pod-{} among {pods} pods (pod-0 to pod-{})",
                f.pod,
                pods - 1
            ));
        }
        if f.at >= duration {
            return Err(format!(
                "--fault {f}: {} is not within the run of {}",
                humantime::format_duration(f.at),
                humantime::format_duration(duration)
            ));
        }
    }
    Ok(())
}

/// Posts each fault to its pod's emulator at its time from `start`, in time order; `emulators`
/// are the pods' addresses. Returns at the last fault; an emulator that refuses is an error.
pub async fn inject(
    faults: &[Fault],
    emulators: &[SocketAddr],
    start: tokio::time::Instant,
) -> anyhow::Result<()> {
    let mut order: Vec<&Fault> = faults.iter().collect();
    order.sort_by_key(|f| f.at);
    let client = reqwest::Client::new();
    for f in order {
        tokio::time::sleep_until(start + f.at).await;
        let url = format!("http://{}/lab/degrade", emulators[f.pod as usize]);
        let resp = client
            .post(&url)
            .json(&f.action.degrade_body())
            .send()
            .await?;
        if !resp.status().is_success() {
            let status = resp.status();
            anyhow::bail!(
                "--fault {f}: POST {url} answered {status}: {}",
                resp.text().await.unwrap_or_default()
            );
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Fault, String> {
        s.parse()
    }

    #[test]
    fn faults_parse_and_print_back() {
        for (text, pod, action, at) in [
            (
                "pod-2:throttle=0.5@30s",
                2,
                FaultAction::Throttle(0.5),
                30.0,
            ),
            ("pod-3:lost@1m30s", 3, FaultAction::Lost, 90.0),
            ("pod-0:recover@2500ms", 0, FaultAction::Recover, 2.5),
            ("pod-1:throttle=1@0s", 1, FaultAction::Throttle(1.0), 0.0),
        ] {
            let f = parse(text).unwrap();
            assert_eq!((f.pod, f.action, f.at.as_secs_f64()), (pod, action, at));
            assert_eq!(parse(&f.to_string()).unwrap(), f, "{f} round-trips");
        }
        assert_eq!(
            FaultAction::Recover.degrade_body(),
            json!({"speed": 1.0, "lost": false})
        );
    }

    #[test]
    fn each_bad_part_is_named() {
        let err = |s: &str| parse(s).unwrap_err();
        assert!(
            err("pod-2").contains("no ':' after the pod"),
            "{}",
            err("pod-2")
        );
        assert!(err("pod-2:lost").contains("no '@TIME' after \"lost\""));
        assert!(err("node-2:lost@30s").starts_with("pod \"node-2\""));
        assert!(err("pod-x:lost@30s").starts_with("pod \"pod-x\""));
        assert!(err("pod-2:throttle=0@30s").starts_with("throttle=0: "));
        assert!(err("pod-2:throttle=1.5@30s").starts_with("throttle=1.5: "));
        assert!(err("pod-2:throttle=half@30s").starts_with("throttle=half: "));
        assert!(err("pod-2:melt@30s").starts_with("\"melt\" is not a fault"));
        assert!(err("pod-2:lost@soon").starts_with("time \"soon\""));
    }

    #[test]
    fn faults_must_fit_the_fleet_and_the_run() {
        let run = Duration::from_secs(40);
        let ok = [parse("pod-3:lost@39s").unwrap()];
        assert_eq!(check(&ok, 4, run), Ok(()));
        let e = check(&[parse("pod-4:lost@10s").unwrap()], 4, run).unwrap_err();
        assert_eq!(
            e,
            "--fault pod-4:lost@10s: there is no pod-4 among 4 pods (pod-0 to pod-3)"
        );
        let e = check(&[parse("pod-1:lost@40s").unwrap()], 4, run).unwrap_err();
        assert_eq!(
            e,
            "--fault pod-1:lost@40s: 40s is not within the run of 40s"
        );
    }
}
