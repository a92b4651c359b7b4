"""CLIP comparison methods (WinCLIP, AdaCLIP-style) that produce the same Result as IAP-AS."""
