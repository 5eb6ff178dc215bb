"""The base of every ModelAdmin whose model is written only through an app's actions."""
from django.contrib import admin, messages
from django.contrib.admin.options import csrf_protect_m
from django.http import HttpResponseRedirect

from rentahal.errors import BrokerError


class ActionModelAdmin(admin.ModelAdmin):
    """The form validates; one action writes the object and its inlines and publishes the change.

    Subclasses implement `save_with_action(request, form, formsets, change)`, `delete_model`
    and `delete_queryset` by calling the app's actions with `acting_user=request.user`.

    Django's admin runs a POST of the change form or the delete page inside a transaction
    of its own. An action's transaction is durable: it must be the one that commits, so its
    events (`rentahal.pushes`) go out after the real commit. So these
    two views run the admin's form handling outside a transaction (`_changeform_view` and
    `_delete_view` are what Django's views run inside theirs); the history entry is then
    written just after the action commits. A refusal the form could not foresee (a backup
    chain looping through two new rows) comes back as an error message on the page.
    """

    @csrf_protect_m
    def changeform_view(self, request, object_id=None, form_url="", extra_context=None):
        return self.showing_refusals(request, self._changeform_view, request, object_id, form_url, extra_context)

    @csrf_protect_m
    def delete_view(self, request, object_id, extra_context=None):
        return self.showing_refusals(request, self._delete_view, request, object_id, extra_context)

    def showing_refusals(self, request, view, *args):
        try:
            return view(*args)
        except BrokerError as exc:
            self.message_user(request, exc.message, messages.ERROR)
            return HttpResponseRedirect(request.get_full_path())

    def save_model(self, request, obj, form, change):
        """Write nothing yet: `save_related` hands the object and its inlines to one action."""

    def save_related(self, request, form, formsets, change):
        for formset in formsets:
            # Writes nothing; records the inline rows added, changed and deleted, from which
            # the admin builds its history message.
            formset.save(commit=False)
        self.save_with_action(request, form, formsets, change)

    def save_with_action(self, request, form, formsets, change) -> None:
        """Call the action that saves `form.instance` with what its inlines keep (`kept_rows`)."""
        raise NotImplementedError

    @staticmethod
    def kept_rows(formset) -> list[dict]:
        """Return the cleaned data of the inline rows the form keeps (not deleted, not blank)."""
        deleted = set(map(id, formset.deleted_forms))
        return [form.cleaned_data for form in formset.forms if form.cleaned_data and id(form) not in deleted]
