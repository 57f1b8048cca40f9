resource "aws_s3_bucket" "artifacts" {
  #checkov:skip=CKV_AWS_144:Cross-region replication is a disaster-recovery choice for the account; the deploy history (object versions) and the deployment targets live in one region, and the module cannot pick a replica region or its key.
  #checkov:skip=CKV_AWS_145:SSE-S3 (AES-256) on purpose: hosts download with their own roles and operators restore with CopyObject, so SSE-KMS would add kms:Decrypt/GenerateDataKey to every reading and uploading principal; bundles hold application code only (the bundler refuses secret files, which live in shared/.env on hosts).
  bucket = var.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id

  # Rollback material: a version expires only once it has been noncurrent (replaced by a
  # newer upload or restore) for noncurrent_version_expiration_days, counted from its own
  # replacement. No count of "newer versions" takes part: with one (S3's
  # newer_noncurrent_versions), whoever may upload could push N cheap copies and make every
  # older version expire at once. Current versions never expire.
  rule {
    id     = "keep-replaced-versions-for-a-fixed-time"
    status = "Enabled"

    filter {}

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_days
    }
  }

  depends_on = [aws_s3_bucket_versioning.artifacts]
}

resource "aws_s3_bucket_logging" "artifacts" {
  count = var.access_log_bucket == null ? 0 : 1

  bucket        = aws_s3_bucket.artifacts.id
  target_bucket = var.access_log_bucket
  target_prefix = var.access_log_prefix
}

# Sends every object event of the bucket to EventBridge; the rule in events.tf picks releases.
resource "aws_s3_bucket_notification" "artifacts" {
  bucket      = aws_s3_bucket.artifacts.id
  eventbridge = true
}

locals {
  # Per (app, env): the principals that may write that release key (PutObject, which also
  # authorises CopyObject onto it and every multipart step): the pair's GitHub role, if
  # any, and the principals listed for it in uploader_principal_arns.
  release_writers = {
    for k in keys(local.app_envs) : k => distinct(concat(
      [for role_key, role in aws_iam_role.github : role.arn if role_key == k],
      lookup(var.uploader_principal_arns, k, []),
    ))
  }
  all_release_writers = distinct(flatten(values(local.release_writers)))

  # Writes into the bucket that are not PutObject/DeleteObject: same-account replication
  # writes versions (ReplicateObject), delete markers (ReplicateDelete) and tags
  # (ReplicateTags) with no bucket-policy allow, and S3 Batch Replication starts it.
  replication_write_actions = [
    "s3:InitiateReplication",
    "s3:ObjectOwnerOverrideToBucketOwner",
    "s3:ReplicateDelete",
    "s3:ReplicateObject",
    "s3:ReplicateTags",
  ]

  # Changes to an existing version's attributes: tags, ACLs, Object Lock retention and legal
  # hold (and bypassing them), and restoring an archived copy.
  object_attribute_actions = [
    "s3:BypassGovernanceRetention",
    "s3:DeleteObjectTagging",
    "s3:DeleteObjectVersionTagging",
    "s3:PutObjectAcl",
    "s3:PutObjectLegalHold",
    "s3:PutObjectRetention",
    "s3:PutObjectTagging",
    "s3:PutObjectVersionAcl",
    "s3:PutObjectVersionTagging",
    "s3:RestoreObject",
  ]

  # Bucket settings whose change would weaken what this file sets up.
  bucket_protection_actions = [
    "s3:DeleteBucket",
    "s3:DeleteBucketPolicy",
    "s3:PutBucketLogging",
    "s3:PutBucketNotification",
    "s3:PutBucketObjectLockConfiguration",
    "s3:PutBucketOwnershipControls",
    "s3:PutBucketPolicy",
    "s3:PutBucketPublicAccessBlock",
    "s3:PutBucketVersioning",
    "s3:PutEncryptionConfiguration",
    "s3:PutLifecycleConfiguration",
    "s3:PutReplicationConfiguration",
  ]
}

# The bucket defends itself: denials by principal hold even against identities whose IAM
# policies allow s3:* in this account. An explicit Deny cannot be overridden by any Allow.
# (Principals are matched by aws:PrincipalArn, which for a role session is the role's ARN.)
data "aws_iam_policy_document" "artifacts_bucket" {
  statement {
    sid     = "DenyInsecureTransport"
    effect  = "Deny"
    actions = ["s3:*"]
    resources = [
      aws_s3_bucket.artifacts.arn,
      "${aws_s3_bucket.artifacts.arn}/*",
    ]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }

  # Releases: only the uploaders write anywhere under releases/ (nobody at all when none is
  # configured)...
  statement {
    sid       = "OnlyUploadersWriteReleases"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/${local.releases_prefix}*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    dynamic "condition" {
      for_each = length(local.all_release_writers) > 0 ? [local.all_release_writers] : []
      content {
        test     = "ArnNotLike"
        variable = "aws:PrincipalArn"
        values   = condition.value
      }
    }
  }

  # ...and each release key only its own (app, env)'s uploaders: a staging credential with
  # broad S3 rights still cannot write the production key.
  dynamic "statement" {
    for_each = local.release_writers
    content {
      effect    = "Deny"
      actions   = ["s3:PutObject"]
      resources = [local.release_object_arns[statement.key]]

      principals {
        type        = "*"
        identifiers = ["*"]
      }

      dynamic "condition" {
        for_each = length(statement.value) > 0 ? [statement.value] : []
        content {
          test     = "ArnNotLike"
          variable = "aws:PrincipalArn"
          values   = condition.value
        }
      }
    }
  }

  # Deploy records and the newest-dispatched pointer: only the deployer Lambda writes them
  # (a forged latest.json with a maximal sequencer would skip every later deploy).
  statement {
    sid       = "OnlyTheDeployerWritesRecords"
    effect    = "Deny"
    actions   = ["s3:PutObject"]
    resources = ["${aws_s3_bucket.artifacts.arn}/${local.records_prefix}*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotLike"
      variable = "aws:PrincipalArn"
      values   = [aws_iam_role.lambda.arn]
    }
  }

  # Every other way to put bytes, versions or delete markers into the bucket: replication
  # (a role that replicates from a bucket of its own needs no allow here in the same account,
  # so only a Deny stops it), batch replication, and the owner override replication uses.
  # Nobody replicates into this bucket; a replica of it elsewhere is configured on this
  # bucket as the source (PutReplicationConfiguration, provisioning only) and writes there.
  statement {
    sid       = "NothingReplicatesIntoTheBucket"
    effect    = "Deny"
    actions   = local.replication_write_actions
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }
  }

  # What changes an object's tags, ACL, lock or storage copy without writing a version: no
  # dropship component does any of it (the bundler sends no tags; ownership is enforced, so
  # ACLs are off), so only the provisioning principals may.
  statement {
    sid       = "OnlyProvisioningChangesObjectAttributes"
    effect    = "Deny"
    actions   = local.object_attribute_actions
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotLike"
      variable = "aws:PrincipalArn"
      values   = local.provisioning_principal_arns
    }
  }

  # History is append-only for everyone: no version is deleted, and no delete marker hides
  # the current version (which would also start its noncurrent-expiry clock). Versions go
  # only through the lifecycle rule. Removing a version on purpose (a secret bundled by
  # mistake) takes the provisioning principal changing this policy first.
  statement {
    sid       = "HistoryIsAppendOnly"
    effect    = "Deny"
    actions   = ["s3:DeleteObject", "s3:DeleteObjectVersion"]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }
  }

  # Versioning, lifecycle, this policy, notifications, logging, encryption, public access:
  # only the provisioning principals change them.
  statement {
    sid       = "OnlyProvisioningChangesProtections"
    effect    = "Deny"
    actions   = local.bucket_protection_actions
    resources = [aws_s3_bucket.artifacts.arn]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "ArnNotLike"
      variable = "aws:PrincipalArn"
      values   = local.provisioning_principal_arns
    }
  }
}

resource "aws_s3_bucket_policy" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  policy = data.aws_iam_policy_document.artifacts_bucket.json

  # Applied last, so the protections it denies to others were set up first.
  depends_on = [
    aws_s3_bucket_public_access_block.artifacts,
    aws_s3_bucket_versioning.artifacts,
    aws_s3_bucket_lifecycle_configuration.artifacts,
    aws_s3_bucket_notification.artifacts,
    aws_s3_bucket_logging.artifacts,
    aws_s3_bucket_server_side_encryption_configuration.artifacts,
    aws_s3_bucket_ownership_controls.artifacts,
  ]
}
