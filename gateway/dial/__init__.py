"""Outbound calls and campaigns: placing and ending calls through the providers' REST APIs
(`dialer`), campaign rules (`policy`), lifecycle (`campaigns`), the runner that dials them
(`runner`), and their Dialgen-compatible webhooks (`payloads`, `inline`)."""
