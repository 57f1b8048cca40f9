//! Which instances SSM knows and how their agents answer: the one paginated, chunked
//! `DescribeInstanceInformation` read that the Lambda (send only to online agents) and
//! `dropship doctor` (say which agents are offline) share.

use aws_sdk_ssm::types::InstanceInformationStringFilter;

use crate::{classify, AwsCall, AwsError, Failure};

/// Most values the `InstanceIds` filter takes in one call.
const IDS_PER_CALL: usize = 50;

/// One registered agent: its instance id and SSM's ping status (`Online`, `ConnectionLost`,
/// `Inactive`). Instances SSM does not know are absent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentPing {
    pub instance_id: String,
    pub ping_status: String,
}

impl AgentPing {
    /// Whether SSM would deliver a command to this agent now.
    pub fn is_online(&self) -> bool {
        self.ping_status == "Online"
    }
}

/// The agents of `instance_ids` SSM knows, in the order SSM lists them. `call` names the
/// caller's reason for the read (each component lists its own calls).
pub async fn agent_pings(
    ssm: &aws_sdk_ssm::Client,
    call: &AwsCall,
    instance_ids: &[String],
) -> Result<Vec<AgentPing>, AwsError> {
    let mut out = Vec::new();
    for chunk in instance_ids.chunks(IDS_PER_CALL) {
        let object = format!("SSM registration of {}", chunk.join(","));
        let filter = InstanceInformationStringFilter::builder()
            .key("InstanceIds")
            .set_values(Some(chunk.to_vec()))
            .build()
            .map_err(|e| AwsError::new(call, object.clone(), Failure::Refused, e.to_string()))?;
        let mut pages = ssm
            .describe_instance_information()
            .filters(filter)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(|e| classify(call, object.clone(), &e))?;
            for info in page.instance_information_list() {
                if let Some(id) = info.instance_id() {
                    out.push(AgentPing {
                        instance_id: id.to_string(),
                        ping_status: info
                            .ping_status()
                            .map(|p| p.as_str().to_string())
                            .unwrap_or_default(),
                    });
                }
            }
        }
    }
    Ok(out)
}
