// A local Serverless Framework plugin: builds build/lambda.zip, the artifact serverless.yml
// names, before `osls package`, `osls deploy` and `osls offline start`, when what goes into it
// changed. It runs the same build as `make lambda-zip` (python -m infra.deploy.build_lambda), with
// --if-stale, so a fresh clone deploys without a separate step and a stale zip never ships.
"use strict";

const { execFileSync } = require("child_process");
const fs = require("fs");
const path = require("path");

class BuildLambdaZip {
  constructor(serverless) {
    this.serverless = serverless;
    const build = () => this.build();
    this.hooks = {
      "before:package:initialize": build,
      "before:offline:start": build, // `osls offline`
      "before:offline:start:init": build, // `osls offline start`
    };
  }

  build() {
    const root = this.serverless.serviceDir || process.cwd();
    const venv = path.join(root, ".venv", "bin", "python");
    const python = fs.existsSync(venv) ? venv : "python3";
    execFileSync(python, ["-m", "infra.deploy.build_lambda", "--if-stale"], {
      cwd: root,
      stdio: "inherit",
    });
  }
}

module.exports = BuildLambdaZip;
