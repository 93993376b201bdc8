"""Alerts: rules in ``hub.toml``'s ``[alerts]`` (config), when they fire (rules), where they
go (dispatch), and the hub's service that feeds, records and sends them (service)."""

from hub.alerts.config import AlertConfigError, AlertsConfig, load
from hub.alerts.rules import Alert, AlertRules
from hub.alerts.service import AlertService

__all__ = ["Alert", "AlertConfigError", "AlertRules", "AlertService", "AlertsConfig", "load"]
