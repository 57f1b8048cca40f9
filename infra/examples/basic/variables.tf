variable "region" {
  description = "AWS region for the pipeline and the target instances."
  type        = string
  default     = "eu-west-1"
}

variable "bucket_name" {
  description = "Globally unique name for the artifact bucket."
  type        = string
}

variable "lambda_zip_path" {
  description = "Zip built by cargo lambda (relative to this directory by default)."
  type        = string
  default     = "../../../target/lambda/deployer-lambda/bootstrap.zip"
}

variable "access_log_bucket" {
  description = "Existing bucket for S3 server access logs (null disables them)."
  type        = string
  default     = null
}
