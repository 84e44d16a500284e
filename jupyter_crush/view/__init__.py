"""Run views: the base view, the delta view (with its page module and CSS), the ipywidgets
view, the comm helpers, the permission prompt, question forms, a sub-agent's section, the
spending status line and the view of a ``%crush verify`` run."""
