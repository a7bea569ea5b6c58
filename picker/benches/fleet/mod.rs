//! The fleet the picker's benchmarks measure against: one vLLM-like report per endpoint, with
//! loads that vary by index so profiles have something to choose between.

use inferpick_schema::LoadReport;
use inferpick_schema::testing::ReportBuilder;

pub use inferpick_schema::testing::MODEL;

/// Endpoint `i`'s report, numbered `seq`.
pub fn report(i: usize, seq: u64) -> LoadReport {
    let address = format!("10.{}.{}.{}:8000", i / 65536, (i / 256) % 256, i % 256);
    let mut r = ReportBuilder::new(&address)
        .seq(seq)
        .waiting((i % 7) as u32)
        .running((i % 31) as u32)
        .kv_utilization((i % 10) as f64 / 12.0)
        .kv_capacity_tokens(245_760)
        .build();
    r.load.kv_block_size_tokens = Some(16);
    r.load.prompt_tokens_per_second = Some(9_000.0 + (i % 5) as f64 * 1_000.0);
    r
}
