"""Message templates: one system for notifications, call-back SMS and inquiry replies.

Templates are data (config.yaml and one <locale>.yaml per locale in this package) rendered by a
sandboxed Jinja2 with strict undefined variables; see docs/templates.md.
"""

from shared.templates.catalog import GENERIC, Catalog, catalog, load_catalog, use_templates
from shared.templates.rendering import (
    CHANNELS,
    Message,
    MissingVariable,
    TemplateValueError,
    check_templates,
    missing_variables,
    render,
    required_variables,
    resolve_locale,
)
from shared.templates.report import log_template_report, template_report
from shared.templates.sms import SmsLength, sms_segments

__all__ = [
    "CHANNELS",
    "GENERIC",
    "Catalog",
    "Message",
    "MissingVariable",
    "SmsLength",
    "TemplateValueError",
    "catalog",
    "check_templates",
    "load_catalog",
    "log_template_report",
    "missing_variables",
    "render",
    "required_variables",
    "resolve_locale",
    "sms_segments",
    "template_report",
    "use_templates",
]
