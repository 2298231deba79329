"""embedcache"""
