"""SSL pre-training recipes, one file per method, registered in `SSL_METHODS`."""

from daebench.encoders.ssl.base import SSL_METHODS, SSLMethod, SSLParams, pretrain, register_ssl_method

__all__ = ["SSL_METHODS", "SSLMethod", "SSLParams", "pretrain", "register_ssl_method"]
