# dropship's own Command document, one per environment class: every command the deployer
# sends runs it (DROPSHIP_COMMAND_DOCUMENT), the deployer role may send no other, and each
# class's host-result rule matches its document's name, so status changes of other shell
# commands in the account (AWS-RunShellScript and the rest) never invoke a deployer. The
# content (one aws:runShellScript step, dropship_contract::wiring::COMMAND_STEP, fed by the
# `commands` and `executionTimeout` parameters the deployer sends) is shared with the test
# harness, which creates the same document on its local SSM endpoint.
resource "aws_ssm_document" "deploy" {
  for_each = local.environment_classes

  name            = local.command_document_names[each.key]
  document_type   = "Command"
  document_format = "JSON"
  content         = file("${path.module}/documents/deploy-command.json")
  tags            = var.tags
}
