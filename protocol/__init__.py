"""tritter's wire protocol: typed events, control messages, run state. Depends on msgspec only."""
