// infra/deploy/serverless-open-chat.js: which stages `osls deploy` refuses as an open chat.
// tests/test_packaging.py runs the real `osls deploy` on the default stage.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";

const { isOpenChat } = createRequire(import.meta.url)("../../infra/deploy/serverless-open-chat.js");

test("token auth without tokens is an open chat, unless the stage says so", () => {
  assert.equal(isOpenChat({ WSCHAT_AUTH: "token", WSCHAT_TOKENS: "" }, false), true);
  assert.equal(isOpenChat({ WSCHAT_AUTH: "token" }, "false"), true);
  assert.equal(isOpenChat({ WSCHAT_AUTH: "token", WSCHAT_TOKENS: "" }, true), false);
  assert.equal(isOpenChat({ WSCHAT_AUTH: "token", WSCHAT_TOKENS: "" }, "true"), false);
});

test("an allow-list of tokens, or another backend, is not", () => {
  assert.equal(isOpenChat({ WSCHAT_AUTH: "token", WSCHAT_TOKENS: "alice:s3cret" }, false), false);
  assert.equal(isOpenChat({ WSCHAT_AUTH: "jwt", WSCHAT_TOKENS: "" }, false), false);
  assert.equal(isOpenChat({ WSCHAT_AUTH: "corp.auth:build", WSCHAT_TOKENS: "" }, false), false);
});
