"""Building and deploying the Lambda artifact."""
