#!/usr/bin/env bash
# Submit tonight's batch as an array job of 16 children; AWS Batch sets each child's 0-based
# AWS_BATCH_JOB_ARRAY_INDEX, which the job definition turns into --shard INDEX/16.
# Register the definition once:
#   aws batch register-job-definition --cli-input-json file://scripts/deploy/aws-batch-job-definition.json
set -euo pipefail
QUEUE="${1:-dgbatch-queue}"
aws batch submit-job \
    --job-name "dgbatch-$(date -u +%Y%m%d)" \
    --job-queue "$QUEUE" \
    --job-definition dgbatch-nightly \
    --array-properties size=16
# For a schedule, an EventBridge rule can call SubmitJob with the same parameters.
