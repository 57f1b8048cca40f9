//! Shared harness for the suites in `tests/tests/`: real binaries, real bash, moto over HTTP.
//! Nothing here fakes a component of ours; it only starts, feeds and observes them.

pub mod bins;
pub mod faults;
pub mod host;
pub mod http;
pub mod imds;
pub mod lambda_rt;
pub mod load;
pub mod local_ssm;
pub mod moto;
pub mod pipeline;
pub mod records;
pub mod repo;
pub mod s3_notifications;
pub mod simhost;
