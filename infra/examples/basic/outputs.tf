output "bucket" {
  value = module.dropship.bucket_name
}

output "host_instance_profiles" {
  description = "Attach each \"<app>/<env>\" profile to that pair's target instances."
  value       = module.dropship.host_instance_profile_names
}

output "github_role_arns" {
  description = "role-to-assume for each app's GitHub workflow, per environment."
  value       = module.dropship.github_role_arns
}

output "uploader_policy_arns" {
  description = "Attach to a plain-CI user or role per (app, env)."
  value       = module.dropship.uploader_policy_arns
}

output "failure_topic_arn" {
  description = "Subscribe e-mail, AWS Chatbot or a webhook Lambda here."
  value       = module.dropship.failure_topic_arn
}

output "dead_letter_queues" {
  value = {
    events         = module.dropship.events_dlq_url
    failed_deploys = module.dropship.failed_deploys_queue_url
  }
}
