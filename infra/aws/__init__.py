"""AWS: DynamoDB, the API Gateway Management API, SQS fan-out and EMF, for the Lambda
handlers."""
