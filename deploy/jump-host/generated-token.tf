# The controller refuses to start without a token, so a first apply that names none makes one:
# `terraform output -raw controller_token` prints it. It is made once and kept in the state;
# setting controller_tokens later replaces it in the Secret.

resource "terraform_data" "generated_token" {
  # uuid() draws from a cryptographic source; two of them hashed give 64 hex characters.
  input = sha256("${uuid()}${uuid()}")

  lifecycle {
    # Without this every plan would draw a new one and lock every caller out.
    ignore_changes = [input]
  }
}

locals {
  generate_token    = length(nonsensitive(var.controller_tokens)) == 0
  controller_tokens = local.generate_token ? [terraform_data.generated_token.output] : var.controller_tokens
}

output "controller_token" {
  description = "The generated bearer token, when controller_tokens names none; null otherwise."
  value       = local.generate_token ? terraform_data.generated_token.output : null
  sensitive   = true
}
