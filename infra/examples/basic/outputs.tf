output "bucket" {
  value = module.dropship.bucket_name
}

output "instance_profile" {
  description = "Attach to every target instance."
  value       = module.dropship.instance_profile_name
}

output "github_role_arns" {
  description = "role-to-assume for each app's GitHub workflow."
  value       = module.dropship.github_role_arns
}

output "uploader_policy_arns" {
  description = "Attach to a plain-CI user or role per app."
  value       = module.dropship.uploader_policy_arns
}

output "dead_letter_queues" {
  value = {
    events         = module.dropship.events_dlq_url
    failed_deploys = module.dropship.failed_deploys_queue_url
  }
}
