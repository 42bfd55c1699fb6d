// A local Serverless Framework plugin: scopes every Lambda permission the framework generates
// for the WebSocket API ($connect, $default, $disconnect and the authorizer) to this API. The
// framework writes them with no SourceArn, so any API Gateway API in any account could invoke
// the socket functions with an event of its choosing: a forged $connect carrying an
// authorizer context registers any principal. The HTTP API's permission already has one.
"use strict";

class ScopeWebSocketPermissions {
  constructor(serverless) {
    this.serverless = serverless;
    // After the events are compiled into the template, before it is written.
    this.hooks = { "before:package:finalize": () => this.scope() };
  }

  scope() {
    const template = this.serverless.service.provider.compiledCloudFormationTemplate;
    for (const resource of Object.values(template.Resources)) {
      const properties = resource.Properties || {};
      if (
        resource.Type === "AWS::Lambda::Permission" &&
        properties.Principal === "apigateway.amazonaws.com" &&
        !properties.SourceArn &&
        (resource.DependsOn || []).includes("WebsocketsApi")
      ) {
        properties.SourceArn = {
          "Fn::Join": [
            "",
            [
              "arn:",
              { Ref: "AWS::Partition" },
              ":execute-api:",
              { Ref: "AWS::Region" },
              ":",
              { Ref: "AWS::AccountId" },
              ":",
              { Ref: "WebsocketsApi" },
              "/*",
            ],
          ],
        };
      }
    }
  }
}

module.exports = ScopeWebSocketPermissions;
