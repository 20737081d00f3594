"""The operator's commands behind `gateway`: calls, the live tail, the webhook receiver, the admin key."""
