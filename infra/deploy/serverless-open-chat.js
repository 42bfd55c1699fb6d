// A local Serverless Framework plugin: `osls deploy` refuses to put an open chat on the
// internet. With WSCHAT_AUTH=token and no WSCHAT_TOKENS any credential is accepted (the seed's
// behaviour, right for `make run`); a stage deploys that only when it says `openChat: true`.
// `osls package` (CI's template check) and `osls offline` warn instead.
"use strict";

const REFUSAL =
  "this stage would deploy an open chat: WSCHAT_AUTH is token and WSCHAT_TOKENS is empty, " +
  "so any credential is accepted. Set the stage's params in serverless.yml: `tokens` (an " +
  "allow-list, best as a {{resolve:secretsmanager:...}} reference), or `auth` (jwt or your " +
  "own backend), or `openChat: true` to deploy an open chat on purpose.";

function isOpenChat(environment, openChat) {
  const onPurpose = String(openChat) === "true";
  return environment.WSCHAT_AUTH === "token" && !environment.WSCHAT_TOKENS && !onPurpose;
}

class RefuseOpenChat {
  constructor(serverless) {
    this.serverless = serverless;
    this.hooks = { initialize: () => this.check() };
  }

  check() {
    const service = this.serverless.service;
    // custom.openChat is the stage's `openChat` param, resolved (a --param on the command
    // line included).
    if (!isOpenChat(service.provider.environment || {}, service.custom.openChat)) return;
    const command = (this.serverless.processedInput.commands || [])[0];
    if (command === "deploy") {
      throw new this.serverless.classes.Error(`Refused: ${REFUSAL}`);
    }
    this.serverless.cli.log(`WARNING: ${REFUSAL}`);
  }
}

module.exports = RefuseOpenChat;
module.exports.isOpenChat = isOpenChat;
