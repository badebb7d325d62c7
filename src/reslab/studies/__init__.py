"""Studies: experiments that make the claims about residual networks visible, one module each."""
