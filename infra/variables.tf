variable "name_prefix" {
  description = "Prefix for every named resource (roles, queues, function, log groups)."
  type        = string
  default     = "dropship"

  validation {
    condition     = can(regex("^[a-zA-Z0-9][a-zA-Z0-9-]{0,30}$", var.name_prefix))
    error_message = "name_prefix must be 1-31 characters of letters, digits and '-'."
  }
}

variable "bucket_name" {
  description = "Name of the versioned artifact bucket that receives releases/<app>/<env>.tar.gz."
  type        = string
}

variable "apps" {
  description = "App names this installation deploys. With environments, every (app, env) pair gets its own uploader policy, host instance profile and release-key protection; SSM may only target instances tagged with these apps."
  type        = list(string)

  validation {
    condition     = length(var.apps) > 0 && alltrue([for a in var.apps : can(regex("^[a-z0-9][a-z0-9-]{0,62}$", a))])
    error_message = "apps must be a non-empty list of names matching [a-z0-9][a-z0-9-]{0,62}."
  }
}

variable "environments" {
  description = "Environment names instances may carry in the env tag; SSM may only target these. Paired with every app (see apps)."
  type        = list(string)
  default     = ["staging", "production"]

  validation {
    condition     = length(var.environments) > 0 && alltrue([for e in var.environments : can(regex("^[a-z0-9][a-z0-9-]{0,62}$", e))])
    error_message = "environments must be a non-empty list of names matching [a-z0-9][a-z0-9-]{0,62}."
  }
}

variable "promotions" {
  description = "Which environment each environment's releases are promoted from (`dropship promote <from> <to>`), as { <to> = \"<from>\" }. The uploader policy of every <app>/<to> may then read <app>/<from>'s release key, its history and its deploy records, so it can copy a version that deployed everywhere there; nothing else crosses environments. Null: each environment from the one listed before it in environments (staging -> production). {} turns promotion off."
  type        = map(string)
  default     = null

  validation {
    condition     = alltrue([for to, from in(var.promotions == null ? {} : var.promotions) : can(regex("^[a-z0-9][a-z0-9-]{0,62}$", to)) && can(regex("^[a-z0-9][a-z0-9-]{0,62}$", from)) && to != from])
    error_message = "promotions must map an environment name to another environment name (both matching [a-z0-9][a-z0-9-]{0,62})."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Rollback window: every version of a release key stays restorable for this many days after it was replaced, whatever is uploaded after it (30-3650). Only then does the lifecycle rule expire it; current versions never expire."
  type        = number
  default     = 180

  validation {
    condition     = var.noncurrent_version_expiration_days >= 30 && var.noncurrent_version_expiration_days <= 3650
    error_message = "noncurrent_version_expiration_days must be between 30 and 3650: shorter would let a burst of uploads remove recent rollback material within a month."
  }
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which incomplete multipart uploads are aborted."
  type        = number
  default     = 1
}

variable "access_log_bucket" {
  description = "Existing bucket that receives S3 server access logs of the artifact bucket (who read, wrote or was refused what, with the requester's ARN). Its policy must let logging.s3.amazonaws.com write under access_log_prefix. Null disables server access logging."
  type        = string
  default     = null
}

variable "access_log_prefix" {
  description = "Key prefix for the server access logs in access_log_bucket."
  type        = string
  default     = "s3-access/dropship/"
}

variable "lambda_zip_path" {
  description = "Path to the deployer Lambda zip built by scripts/package-lambda (target/lambda/deployer-lambda/bootstrap.zip)."
  type        = string
}

variable "lambda_memory_mb" {
  description = "Lambda memory in MB (CPU scales with it; bundle verification streams SHA-256 over the object)."
  type        = number
  default     = 512

  validation {
    condition     = var.lambda_memory_mb >= 128 && var.lambda_memory_mb <= 10240
    error_message = "lambda_memory_mb must be between 128 and 10240."
  }
}

variable "lambda_timeout_secs" {
  description = "Lambda timeout in seconds: long enough to stream-verify the largest bundle and dispatch."
  type        = number
  default     = 300

  validation {
    condition     = var.lambda_timeout_secs >= 1 && var.lambda_timeout_secs <= 900
    error_message = "lambda_timeout_secs must be between 1 and 900."
  }
}

variable "production_environments" {
  description = "Environments of the production class. Their releases, host results and catch-ups are handled by a deployer function of their own (<name_prefix>-deployer-production, with its own reserved concurrency, command document and rules); every other environment in environments shares <name_prefix>-deployer-nonproduction. So no staging upload, host result or bundle can take production's slots. Names not in environments are ignored; a class without environments gets no function."
  type        = list(string)
  default     = ["production"]

  validation {
    condition     = alltrue([for e in var.production_environments : can(regex("^[a-z0-9][a-z0-9-]{0,62}$", e))])
    error_message = "production_environments must be environment names matching [a-z0-9][a-z0-9-]{0,62}."
  }
}

variable "lambda_reserved_concurrency" {
  description = "Reserved concurrent executions of each deployer function, by environment class: production's function keeps its slots whatever the non-production one does, and the non-production one can never use more than its own. -1 leaves a function unreserved (accounts with a small concurrency quota); that gives up the guarantee for its class."
  type = object({
    production    = number
    nonproduction = number
  })
  default = {
    production    = 5
    nonproduction = 5
  }

  validation {
    condition     = alltrue([for v in values(var.lambda_reserved_concurrency) : v == -1 || (v >= 1 && v <= 1000)])
    error_message = "lambda_reserved_concurrency values must be -1 (unreserved) or 1-1000: 0 would stop that class's deploys altogether."
  }
}

variable "event_retry_attempts" {
  description = "EventBridge retry attempts when the Lambda cannot be invoked, before the event goes to the DLQ."
  type        = number
  default     = 10

  validation {
    condition     = var.event_retry_attempts >= 0 && var.event_retry_attempts <= 185
    error_message = "event_retry_attempts must be between 0 and 185."
  }
}

variable "event_max_age_secs" {
  description = "Oldest event (seconds, 60-86400) EventBridge still retries."
  type        = number
  default     = 3600

  validation {
    condition     = var.event_max_age_secs >= 60 && var.event_max_age_secs <= 86400
    error_message = "event_max_age_secs must be between 60 and 86400."
  }
}

variable "lambda_async_retry_attempts" {
  description = "Retries Lambda makes for a failed asynchronous invocation (0-2) before sending it to the failure queue."
  type        = number
  default     = 2

  validation {
    condition     = var.lambda_async_retry_attempts >= 0 && var.lambda_async_retry_attempts <= 2
    error_message = "lambda_async_retry_attempts must be 0, 1 or 2."
  }
}

variable "lambda_async_max_event_age_secs" {
  description = "Oldest asynchronous event (seconds, 60-21600) Lambda still processes."
  type        = number
  default     = 3600

  validation {
    condition     = var.lambda_async_max_event_age_secs >= 60 && var.lambda_async_max_event_age_secs <= 21600
    error_message = "lambda_async_max_event_age_secs must be between 60 and 21600."
  }
}

variable "log_retention_days" {
  description = "Retention (days) of the Lambda and SSM command-output log groups; must be a value CloudWatch Logs accepts."
  type        = number
  default     = 365

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of CloudWatch Logs' retention values (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653)."
  }
}

variable "queue_retention_secs" {
  description = "Message retention of the dead-letter and failure queues (max 14 days)."
  type        = number
  default     = 1209600

  validation {
    condition     = var.queue_retention_secs >= 60 && var.queue_retention_secs <= 1209600
    error_message = "queue_retention_secs must be between 60 and 1209600 (14 days)."
  }
}

# Lambda settings (each maps to one DROPSHIP_* variable; see docs/architecture.md).

variable "app_root" {
  description = "DROPSHIP_APP_ROOT: app root on hosts; {app} and {env} are substituted."
  type        = string
  default     = "/opt/dropship/{app}"
}

variable "app_tag_key" {
  description = "DROPSHIP_APP_TAG_KEY: instance tag holding the app name. Also the tag the SendCommand permission is conditioned on."
  type        = string
  default     = "dropship:app"
}

variable "env_tag_key" {
  description = "DROPSHIP_ENV_TAG_KEY: instance tag holding the environment. Also the tag the SendCommand permission is conditioned on."
  type        = string
  default     = "dropship:env"
}

variable "max_concurrency" {
  description = "DROPSHIP_MAX_CONCURRENCY: SSM MaxConcurrency (count or percentage)."
  type        = string
  default     = "50%"
}

variable "max_errors" {
  description = "DROPSHIP_MAX_ERRORS: SSM MaxErrors (count or percentage)."
  type        = string
  default     = "0"
}

variable "delivery_timeout_secs" {
  description = "DROPSHIP_DELIVERY_TIMEOUT_SECS: SendCommand TimeoutSeconds."
  type        = number
  default     = 600

  validation {
    condition     = var.delivery_timeout_secs >= 30 && var.delivery_timeout_secs <= 2592000
    error_message = "delivery_timeout_secs must be between 30 and 2592000 (the Lambda refuses other values)."
  }
}

variable "execution_timeout_secs" {
  description = "DROPSHIP_EXECUTION_TIMEOUT_SECS: executionTimeout of the host script."
  type        = number
  default     = 1800

  validation {
    condition     = var.execution_timeout_secs >= 60 && var.execution_timeout_secs <= 172800
    error_message = "execution_timeout_secs must be between 60 and 172800 (the Lambda refuses other values)."
  }
}

variable "max_bundle_bytes" {
  description = "DROPSHIP_MAX_BUNDLE_BYTES: largest object the Lambda verifies."
  type        = number
  default     = 2147483648

  validation {
    condition     = var.max_bundle_bytes >= 1024 && var.max_bundle_bytes <= 5497558138880
    error_message = "max_bundle_bytes must be between 1024 and 5 TiB (the Lambda refuses other values)."
  }
}

variable "lock_timeout_secs" {
  description = "DROPSHIP_LOCK_TIMEOUT_SECS: seconds the host script waits for the host lock."
  type        = number
  default     = 300

  validation {
    condition     = var.lock_timeout_secs >= 1 && var.lock_timeout_secs <= 86400
    error_message = "lock_timeout_secs must be between 1 and 86400 (the Lambda refuses other values)."
  }
}

# Who may do what (bucket policy, CI roles, snippets).

variable "uploader_principal_arns" {
  description = "Per \"<app>/<env>\", the IAM users or roles (exact ARNs, no wildcards) that upload and restore that pair outside GitHub OIDC, e.g. { \"shop/staging\" = [\"arn:aws:iam::111122223333:role/shop-ci-staging\"] }. Attach the pair's uploader policy to them as well. The bucket policy denies writes to a release key to everyone else; the pair's GitHub role (github_oidc_subjects) is added automatically."
  type        = map(list(string))
  default     = {}

  validation {
    condition     = alltrue([for k, arns in var.uploader_principal_arns : can(regex("^[a-z0-9][a-z0-9-]{0,62}/[a-z0-9][a-z0-9-]{0,62}$", k)) && alltrue([for a in arns : startswith(a, "arn:")])])
    error_message = "uploader_principal_arns keys must be \"<app>/<env>\" and every value an ARN (arn:...)."
  }

  # The bucket policy matches these with ArnNotLike: a wildcard would let anyone able to create
  # a matching role or user (or, with "*", anyone at all) write that release key.
  validation {
    condition     = alltrue([for k, arns in var.uploader_principal_arns : alltrue([for a in arns : !strcontains(a, "*") && !strcontains(a, "?")])])
    error_message = "uploader_principal_arns must list exact ARNs: a wildcard (* or ?) would let every matching role or user write that release key. Name each CI role or user."
  }
}

variable "provisioning_principal_arns" {
  description = "IAM roles or users (ARNs; * wildcards allowed) that may change the bucket's versioning, lifecycle, policy, notifications and logging, and (in the SCP / permissions-boundary snippets) dropship tags and host profiles. Empty: the role or user running this Terraform. Whoever applies this module later must be in the list, or the bucket refuses its changes (the account root can always reset the bucket policy)."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for a in var.provisioning_principal_arns : startswith(a, "arn:")])
    error_message = "provisioning_principal_arns must be ARNs (arn:...)."
  }
}

variable "github_oidc_subjects" {
  description = "Per \"<app>/<env>\", the GitHub OIDC subjects allowed to assume that pair's upload role, e.g. { \"shop/production\" = [\"repo:acme/shop:environment:production\"] }. Each subject must name a GitHub environment (repo:<owner>/<repo>:environment:<name>), so that environment's reviewers and branch rules gate the role, and no subject may serve two pairs. Pairs not listed get no role."
  type        = map(list(string))
  default     = {}

  validation {
    condition = alltrue([
      for k, subs in var.github_oidc_subjects :
      can(regex("^[a-z0-9][a-z0-9-]{0,62}/[a-z0-9][a-z0-9-]{0,62}$", k)) && length(subs) > 0 &&
      alltrue([for s in subs : can(regex("^repo:[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+:environment:[^*?:]+$", s))])
    ])
    error_message = "Keys must be \"<app>/<env>\"; each needs at least one subject of the form repo:<owner>/<repo>:environment:<name>, without wildcards."
  }

  # The subject's GitHub environment is the pair's own: staging's job (its branch rules, no
  # reviewers) must never hold production's role because of a copy-paste in the map.
  validation {
    condition = alltrue([
      for k, subs in var.github_oidc_subjects : alltrue([
        for s in subs : endswith(s, ":environment:${element(split("/", k), 1)}")
      ])
    ])
    error_message = "Each GitHub OIDC subject must name its pair's own environment: \"<app>/<env>\" takes only repo:<owner>/<repo>:environment:<env> (name the GitHub environment after the dropship environment)."
  }

  validation {
    condition     = length(flatten(values(var.github_oidc_subjects))) == length(distinct(flatten(values(var.github_oidc_subjects))))
    error_message = "A GitHub OIDC subject may appear under one \"<app>/<env>\" only: a job must not be able to assume two environments' roles."
  }
}

variable "github_oidc_provider_arn" {
  description = "ARN of an existing token.actions.githubusercontent.com OIDC provider. Leave null to have the module create one (only when github_oidc_subjects is set)."
  type        = string
  default     = null
}

variable "tags" {
  description = "Tags applied to every taggable resource."
  type        = map(string)
  default     = {}
}

# Failure notifications (dropship's "Dropship Deployment Finished" events, failures only).

variable "failure_topic_enabled" {
  description = "Create an SNS topic (KMS-encrypted) that receives every failed deploy's event; subscribe e-mail, AWS Chatbot or a webhook Lambda to it (README)."
  type        = bool
  default     = false
}

variable "failure_topic_chat_format" {
  description = "Deliver messages to the failure topic in AWS Chatbot's custom-notification format (title and description in Markdown) instead of the raw event, so a Chatbot channel subscribed to the topic renders them."
  type        = bool
  default     = false
}

variable "failure_notification_targets" {
  description = "Further EventBridge targets for failed deploys' raw events: SNS topics, SQS queues, Lambda functions, API destinations… (arn; role_arn where EventBridge needs a role, e.g. API destinations). Their resource policies must allow events.amazonaws.com."
  type = list(object({
    arn      = string
    role_arn = optional(string)
  }))
  default = []

  validation {
    condition     = alltrue([for t in var.failure_notification_targets : startswith(t.arn, "arn:")])
    error_message = "Every failure_notification_targets entry needs an arn (arn:...)."
  }
}

variable "reconcile_minutes" {
  description = "Minutes between reconciles: the bound within which a tagged instance that was offline, late to register, or re-tagged gets its fleet's version."
  type        = number
  default     = 5

  validation {
    condition     = var.reconcile_minutes >= 1 && var.reconcile_minutes <= 60
    error_message = "reconcile_minutes must be 1-60."
  }
}
